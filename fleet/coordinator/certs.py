"""``fleet certs``: a lab CA and per-host certificates for the agents' TLS, made with openssl.

    fleet certs ca --out certs/                                   # ca.pem, ca.key (guard it)
    fleet certs issue --ca certs/ --name pixel-a --ip 10.0.0.7    # pixel-a.pem/.key (server)
    fleet certs issue --ca certs/ --name coordinator --client     # for mutual TLS

An agent then serves with ``--tls-cert certs/pixel-a.pem --tls-key certs/pixel-a.key`` (and
``--tls-client-ca certs/ca.pem`` to require client certificates); the experiment's phone entry
names ``tls_ca_file: certs/ca.pem`` (and ``tls_cert_file``/``tls_key_file``: the coordinator's
client pair). Keys are written with mode 0600. EC P-256 keys; certificates valid ``--days``.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
from pathlib import Path


class CertError(Exception):
    pass


def _openssl(*args: str) -> None:
    try:
        subprocess.run(["openssl", *args], check=True, capture_output=True, text=True, timeout=60)
    except FileNotFoundError:
        raise CertError("openssl is not installed (Debian package openssl)") from None
    except subprocess.CalledProcessError as exc:
        raise CertError(f"openssl {args[0]} failed: {exc.stderr.strip()[-300:]}") from None


def _new_key(path: Path) -> None:
    _openssl("ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", str(path))
    os.chmod(path, 0o600)


def make_ca(out: Path, name: str = "slm-fleet lab CA", days: int = 3650) -> tuple[Path, Path]:
    out.mkdir(parents=True, exist_ok=True)
    cert, key = out / "ca.pem", out / "ca.key"
    if cert.exists() or key.exists():
        raise CertError(f"{out} already holds a CA (ca.pem/ca.key); not overwritten")
    _new_key(key)
    _openssl(
        "req", "-x509", "-new", "-key", str(key), "-sha256", "-days", str(days),
        "-subj", f"/CN={name}", "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign", "-out", str(cert),
    )  # fmt: skip
    return cert, key


def issue(
    ca_dir: Path,
    name: str,
    out: Path,
    *,
    ips: tuple[str, ...] = (),
    dns: tuple[str, ...] = (),
    client: bool = False,
    days: int = 825,
) -> tuple[Path, Path]:
    """A certificate for ``name`` signed by the CA in ``ca_dir``: a server certificate for
    its IPs and DNS names (always 127.0.0.1 and localhost too), or a client one."""
    ca_cert, ca_key = ca_dir / "ca.pem", ca_dir / "ca.key"
    if not ca_cert.is_file() or not ca_key.is_file():
        raise CertError(f"{ca_dir} holds no CA (run: fleet certs ca --out {ca_dir})")
    out.mkdir(parents=True, exist_ok=True)
    cert, key = out / f"{name}.pem", out / f"{name}.key"
    _new_key(key)
    if client:
        ext = "extendedKeyUsage=clientAuth\nkeyUsage=critical,digitalSignature\n"
    else:
        alt = [f"IP:{ip}" for ip in ("127.0.0.1", *ips)]
        alt += [f"DNS:{d}" for d in ("localhost", *dns)]
        ext = (
            f"subjectAltName={','.join(dict.fromkeys(alt))}\n"
            "extendedKeyUsage=serverAuth\nkeyUsage=critical,digitalSignature\n"
        )
    with tempfile.TemporaryDirectory() as tmp:
        csr, extfile = Path(tmp) / "req.csr", Path(tmp) / "ext.cnf"
        extfile.write_text(ext)
        _openssl("req", "-new", "-key", str(key), "-subj", f"/CN={name}", "-out", str(csr))
        _openssl(
            "x509", "-req", "-in", str(csr), "-CA", str(ca_cert), "-CAkey", str(ca_key),
            "-CAcreateserial", "-days", str(days), "-sha256", "-extfile", str(extfile),
            "-out", str(cert),
        )  # fmt: skip
    return cert, key
