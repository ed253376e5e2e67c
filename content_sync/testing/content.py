"""Deterministic, realistic resource payloads for the local feed.

Every payload is a pure function of (seed, name, salt): the model never stores documents, it
re-generates them on demand (that is what keeps a 200,000-resource feed small in memory).
CVE records start from one of the real CVE 5 records in `data/cve-samples.jsonl` (ids, dates and
lists varied) and are padded with realistic lists (affected versions, references, KB
remediations) towards a per-record target size drawn from a log-normal distribution around
`avg_size`, so sizes vary from ~600 bytes (rejected records) to 40 KB and more.
"""

from __future__ import annotations

import json
import math
import random
from array import array
from functools import lru_cache
from importlib import resources
from typing import Any

__all__ = [
    "GLOBAL_NAMES",
    "KB_RANGE",
    "cve_payload",
    "is_cve",
    "kb",
    "other_names",
    "other_payload",
    "payload",
    "samples",
]

# The global (non-CVE) resources of the real vulnerability context, in the order we create them.
GLOBAL_NAMES = ("FEED-GLOBAL", "OSCPE-GLOBAL", "CNA-MAPPING-GLOBAL")
KB_RANGE = (4_000_000, 5_070_000)

# Log-normal spread of the per-record size; the mean stays at avg_size.
_SIGMA = 0.8

_PRODUCTS: tuple[tuple[str, str], ...] = (
    ("Microsoft", "Windows 10 Version 22H2"),
    ("Microsoft", "Windows Server 2022"),
    ("Microsoft", "Microsoft Office LTSC 2021"),
    ("Linux", "Linux"),
    ("Apache Software Foundation", "Apache Tomcat"),
    ("Oracle Corporation", "MySQL Server"),
    ("Red Hat", "Red Hat Enterprise Linux 9"),
    ("Google", "Android"),
    ("Mozilla", "Firefox"),
    ("OpenSSL", "OpenSSL"),
    ("Cisco", "Cisco IOS XE Software"),
    ("Fortinet", "FortiOS"),
    ("SAP_SE", "SAP NetWeaver AS Java"),
    ("Siemens", "SIMATIC S7-1500 CPU family"),
    ("Canonical", "Ubuntu"),
    ("SUSE", "SUSE Linux Enterprise Server 15 SP6"),
    ("Juniper Networks", "Junos OS"),
    ("Automattic", "WooCommerce"),
    ("Schneider Electric", "EcoStruxure\u2122 Control Expert"),
    ("Intel", "Intel\u00ae Ethernet Controller E810"),
    ("Zyxel", "ATP series firmware"),
    ("D-Link", "DIR-846"),
    ("Samsung Mobile", "Samsung Mobile Devices"),
    ("Palo Alto Networks", "PAN-OS"),
)
_STATUSES = ("affected", "unaffected")
_TAGS = (
    "vendor-advisory",
    "patch",
    "x_refsource_CONFIRM",
    "mailing-list",
    "exploit",
    "third-party-advisory",
    "issue-tracking",
    "release-notes",
)
_GERMAN = (
    "Eine Schwachstelle wurde in {vendor} {product} bis {ver} entdeckt. Sie wurde als {level} "
    "eingestuft. Betroffen davon ist eine unbekannte Funktion der Datei {file}. Durch das "
    "Manipulieren mit einer unbekannten Eingabe kann eine Pufferüberlauf-Schwachstelle "
    "ausgenutzt werden. Der Angriff kann über das Netzwerk erfolgen. Der Exploit steht zur "
    "öffentlichen Verfügung."
)
_FILES = (
    "/admin/login.php",
    "net/sched/sch_api.c",
    "src/main.c",
    "lib/crypto/x509.c",
    "/cgi-bin/luci",
    "wp-content/plugins/forms/ajax.php",
    "drivers/gpu/drm/drm_gem.c",
)


@lru_cache(maxsize=1)
def samples() -> tuple[tuple[str, str, int, bool], ...]:
    """(raw line, cveId, size, rejected) of every sample record, read once."""
    text = resources.files("content_sync.testing").joinpath("data/cve-samples.jsonl")
    out = []
    for line in text.read_text("utf-8").splitlines():
        if line.strip():
            rec = json.loads(line)
            meta = rec["cveMetadata"]
            out.append((line, meta["cveId"], len(line.encode()), meta["state"] == "REJECTED"))
    return tuple(out)


def is_cve(name: str) -> bool:
    return name.startswith("CVE-")


def _ri(rng: random.Random, lo: int, hi: int) -> int:
    """Uniform int in [lo, hi]; several times faster than randint, which dominates generation."""
    return lo + int(rng.random() * (hi - lo + 1))


def kb(rng: random.Random) -> str:
    return f"KB{_ri(rng, KB_RANGE[0], KB_RANGE[1] - 1)}"


def other_names(count: int) -> list[str]:
    """Names of the `count` non-CVE resources: the globals first, then TID-0001, TID-0002, ..."""
    names = list(GLOBAL_NAMES[:count])
    names += [f"TID-{i:04d}" for i in range(1, count - len(names) + 1)]
    return names


def payload(seed: int, name: str, salt: int, avg_size: int) -> dict[str, Any]:
    """The payload a `create` of `name` at offset `salt` carries."""
    if is_cve(name):
        return cve_payload(seed, name, salt, avg_size)
    return other_payload(seed, name, salt)


def _rng(seed: int, name: str, salt: int) -> random.Random:
    # str seeds go through sha512: stable across processes, unlike hash().
    return random.Random(f"{seed}|{name}|{salt}")


def _date(rng: random.Random, year: int) -> str:
    return (
        f"{year}-{_ri(rng, 1, 12):02d}-{_ri(rng, 1, 28):02d}T{_ri(rng, 0, 23):02d}:"
        f"{_ri(rng, 0, 59):02d}:{_ri(rng, 0, 59):02d}.{_ri(rng, 0, 999):03d}Z"
    )


def _hexid(rng: random.Random, n: int = 40) -> str:
    return rng.randbytes(n // 2).hex()


def _kbs(rng: random.Random, count: int) -> list[str]:
    # One randbytes call for the whole list: KB lists run to hundreds of entries per record.
    lo, span = KB_RANGE[0], KB_RANGE[1] - KB_RANGE[0]
    return [f"KB{lo + v % span}" for v in array("I", rng.randbytes(4 * count))]


def _version_entry(rng: random.Random, style: int) -> dict[str, Any]:
    # One getrandbits call per entry: these entries are the bulk of every large record.
    if style == 0:  # Linux-kernel style git ranges
        return {
            "version": rng.randbytes(20).hex(),
            "lessThan": rng.randbytes(20).hex(),
            "status": "affected",
            "versionType": "git",
        }
    bits = rng.getrandbits(32)
    major, minor, patch = 1 + bits % 12, (bits >> 4) % 31, 1 + (bits >> 9) % 300
    if style == 1:  # stable-branch semver ranges
        return {
            "version": f"{major}.{minor}.{patch}",
            "lessThanOrEqual": f"{major}.{minor}.*",
            "status": "unaffected",
            "versionType": "semver",
        }
    return {
        "version": f"{major}.{minor}.0",
        "lessThan": f"{major}.{minor}.{patch % 99 + 1}",
        "status": _STATUSES[(bits >> 20) & 1],
        "versionType": "custom",
    }


# Rough serialized sizes, used to aim at the target size without re-serializing each record.
_VERSION_BYTES = (170, 95, 95)
_KB_BYTES = 12
_REF_BYTES = 110


def _reference(rng: random.Random, cve: str, year: int) -> dict[str, Any]:
    bits = rng.getrandbits(40)
    m, d, n = 1 + bits % 12, 1 + (bits >> 4) % 28, 1 + (bits >> 9) % 99_998
    kind = (bits >> 27) % 8
    if kind == 0:
        url = f"https://lists.debian.org/debian-lts-announce/{year}/{m:02d}/msg{n % 1000:05d}.html"
    elif kind == 1:
        url = f"https://security.netapp.com/advisory/ntap-{year}{m:02d}{d:02d}-{n % 9999:04d}/"
    elif kind == 2:
        url = f"https://git.kernel.org/stable/c/{rng.randbytes(20).hex()}"
    elif kind == 3:
        url = f"https://access.redhat.com/errata/RHSA-{year}:{n}"
    elif kind == 4:
        url = f"https://msrc.microsoft.com/update-guide/vulnerability/{cve}"
    elif kind == 5:
        g = rng.randbytes(6).hex()
        url = f"https://github.com/advisories/GHSA-{g[:4]}-{g[4:8]}-{g[8:]}"
    elif kind == 6:
        url = f"https://ubuntu.com/security/notices/USN-{n}-1"
    else:
        url = f"https://vuldb.com/?id.{n}"
    ref: dict[str, Any] = {"url": url}
    if (bits >> 30) % 10 < 6:
        ref["tags"] = [_TAGS[(bits >> 34) % len(_TAGS)]]
    return ref


def _affected(rng: random.Random, count: int) -> dict[str, Any]:
    vendor, product = rng.choice(_PRODUCTS)
    style = _ri(rng, 0, 2)
    entry: dict[str, Any] = {
        "vendor": vendor,
        "product": product,
        "defaultStatus": rng.choice(_STATUSES),
    }
    if style == 0:
        entry["repo"] = "https://git.kernel.org/pub/scm/linux/kernel/git/stable/linux.git"
        entry["programFiles"] = [rng.choice(_FILES)]
    entry["versions"] = [_version_entry(rng, style) for _ in range(max(1, count))]
    return entry


def _metric(rng: random.Random) -> dict[str, Any]:
    av = rng.choice(("NETWORK", "ADJACENT_NETWORK", "LOCAL"))
    score = round(rng.uniform(2.0, 10.0), 1)
    sev = "CRITICAL" if score >= 9 else "HIGH" if score >= 7 else "MEDIUM" if score >= 4 else "LOW"
    vector = f"CVSS:3.1/AV:{av[0]}/AC:L/PR:N/UI:N/S:U/C:H/I:H/A:H"
    return {
        "format": "CVSS",
        "scenarios": [{"lang": "en", "value": "GENERAL"}],
        "cvssV3_1": {
            "version": "3.1",
            "attackVector": av,
            "attackComplexity": "LOW",
            "privilegesRequired": "NONE",
            "userInteraction": "NONE",
            "scope": "UNCHANGED",
            "confidentialityImpact": "HIGH",
            "integrityImpact": "HIGH",
            "availabilityImpact": "HIGH",
            "baseScore": score,
            "baseSeverity": sev,
            "vectorString": vector,
        },
    }


def cve_payload(seed: int, name: str, salt: int, avg_size: int) -> dict[str, Any]:
    rng = _rng(seed, name, salt)
    line, old_id, base_size, rejected = rng.choice(samples())
    # Textual replace of the template id also fixes ids inside descriptions, ADP entries, etc.
    rec: dict[str, Any] = json.loads(line.replace(old_id, name))
    try:
        year = int(name.split("-")[1])
    except (IndexError, ValueError):
        year = 2024
    rec["dataType"] = "CVE_RECORD"
    rec["dataVersion"] = "5.1"
    meta = rec["cveMetadata"]
    meta["cveId"] = name
    meta["dateReserved"] = _date(rng, year)
    meta["datePublished"] = _date(rng, min(year + _ri(rng, 0, 1), 2026))
    meta["dateUpdated"] = _date(rng, min(year + _ri(rng, 1, 2), 2026))
    cna = rec["containers"]["cna"]
    if rejected:
        return rec

    # Mean of the padded size comes out near the target because rejected records are few and the
    # templates are mostly smaller than avg_size.
    mu = math.log(avg_size * 1.04) - _SIGMA * _SIGMA / 2  # 1.04: measured padding shortfall
    target = min(int(rng.lognormvariate(mu, _SIGMA)), avg_size * 12)
    budget = max(0, target - base_size)

    if rng.random() < 0.08:
        vendor, product = rng.choice(_PRODUCTS)
        text = _GERMAN.format(
            vendor=vendor,
            product=product,
            ver=f"{_ri(rng, 1, 9)}.{_ri(rng, 0, 9)}",
            level=rng.choice(("kritisch", "problematisch")),
            file=rng.choice(_FILES),
        )
        cna.setdefault("descriptions", []).append({"lang": "de", "value": text})
        budget -= len(text.encode()) + 30
    if "metrics" not in cna:
        cna["metrics"] = [_metric(rng)]
        budget -= 420
    if "problemTypes" not in cna:
        cna["problemTypes"] = [
            {
                "descriptions": [
                    {
                        "lang": "en",
                        "type": "CWE",
                        "cweId": "CWE-787",
                        "description": "CWE-787 Out-of-bounds Write",
                    }
                ]
            }
        ]
    references = cna.setdefault("references", [])
    if not references:
        references.append(_reference(rng, name, year))
    affected = cna.setdefault("affected", [])

    budget = max(budget, 0)
    n_kb = max(1, int(budget * 0.15 / _KB_BYTES))
    n_ref = int(budget * 0.2 / _REF_BYTES)
    version_budget = budget * 0.65
    while version_budget > 0 or not any(a.get("versions") for a in affected):
        style_count = max(1, min(400, int(rng.uniform(0.2, 1.0) * version_budget / 95)))
        block = _affected(rng, style_count)
        affected.append(block)
        version_budget -= (
            sum(
                _VERSION_BYTES[0] if v.get("versionType") == "git" else 95
                for v in block["versions"]
            )
            + 120
        )
    references.extend(_reference(rng, name, year) for _ in range(n_ref))
    remediations: dict[str, Any] = {"windows": [{"anyOf": _kbs(rng, n_kb)}]}
    if rng.random() < 0.15:
        # Distribution keys contain '/' and package versions contain '~': JSON Pointer escapes.
        remediations["debian/12"] = [{"anyOf": [f"openssl 3.0.{_ri(rng, 1, 17)}-1~deb12u1"]}]
    cna["x_remediations"] = remediations
    return rec


_OSCPE = {
    "almalinux": "almalinux:almalinux:$(MAJOR_VERSION)",
    "amzn": "amazon:amazon_linux:$(MAJOR_VERSION)",
    "centos": "centos:centos:$(MAJOR_VERSION)",
    "darwin": "apple:macos:$(MAJOR_VERSION).$(MINOR_VERSION)",
    "debian": "debian:debian_linux:$(MAJOR_VERSION)",
    "fedora": "fedoraproject:fedora:$(MAJOR_VERSION)",
    "opensuse-leap": "opensuse:leap:$(MAJOR_VERSION).$(MINOR_VERSION)",
    "ol": "oracle:linux:$(MAJOR_VERSION):$(MINOR_VERSION)",
    "rhel": "redhat:enterprise_linux:$(MAJOR_VERSION)",
    "rocky": "rocky:rocky:$(MAJOR_VERSION)",
    "sles": "suse:sles:$(MAJOR_VERSION).$(MINOR_VERSION)",
    "ubuntu": "canonical:ubuntu_linux:$(MAJOR_VERSION).$(MINOR_VERSION)",
    "windows": "microsoft:windows:$(MAJOR_VERSION)",
}


def other_payload(seed: int, name: str, salt: int) -> dict[str, Any]:
    rng = _rng(seed, name, salt)
    updated = _date(rng, 2025)
    if name == "FEED-GLOBAL":
        return {
            "name": name,
            "updated": updated,
            "sources": {
                "nvd": {
                    "title": "National Vulnerability Database",
                    "enabled": True,
                    "url": "https://nvd.nist.gov/feeds/json/cve/2.0/",
                },
                "cve5": {
                    "title": "CVE List V5",
                    "enabled": True,
                    "url": "https://github.com/CVEProject/cvelistV5",
                },
                "canonical": {
                    "title": "Ubuntu OVAL",
                    "enabled": True,
                    "url": "https://security-metadata.canonical.com/oval/",
                },
                "redhat": {
                    "title": "Red Hat VEX",
                    "enabled": rng.random() < 0.9,
                    "url": "https://security.access.redhat.com/data/csaf/v2/vex/",
                },
                "msu": {
                    "title": "Microsoft Security Updates",
                    "enabled": True,
                    "url": "https://api.msrc.microsoft.com/cvrf/v3.0/",
                },
            },
            "contexts": ["vd_1.0.0"],
        }
    if name == "OSCPE-GLOBAL":
        return {"updated": updated, "oscpe": dict(_OSCPE)}
    if name == "CNA-MAPPING-GLOBAL":
        return {
            "updated": updated,
            "cnaMapping": {
                "suse": "suse",
                "redhat": "redhat",
                "canonical": "canonical",
                "debian": "debian",
                "alma": "alma",
                "microsoft": "nvd",
            },
            "platformCnaMapping": {
                "ubuntu": "canonical",
                "rhel": "redhat",
                "centos": "redhat",
                "sles": "suse",
                "debian": "debian",
                "windows": "microsoft",
                "darwin": "nvd",
            },
            "majorVersionEquivalence": {"almalinux": {"8": "redhat_8", "9": "redhat_9"}},
        }
    vendor, product = rng.choice(_PRODUCTS)
    return {
        "id": name,
        "updated": updated,
        "target": rng.choice(("windows", "macos", "linux")),
        "source": {"vendor": f"^{vendor}$", "product": f"^{product}(?: .*)?$"},
        "translation": [
            {
                "vendor": vendor.lower().replace(" ", "_"),
                "product": product.lower().replace(" ", "_"),
            }
        ],
        "action": ["replace_vendor", "replace_product"],
    }
