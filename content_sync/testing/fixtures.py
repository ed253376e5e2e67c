"""placeholder until the feed fixtures land"""
