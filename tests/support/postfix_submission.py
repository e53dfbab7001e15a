"""A private Postfix set up as a submission server: STARTTLS required, then SASL AUTH.

``SubmissionPostfix`` is a ``PostfixInstance`` (tests/support/postfix.py: own config_directory,
queue, loopback port, virtual(8) delivery to Maildir, the system's Postfix never touched) whose
smtpd additionally

* requires TLS before anything else (``smtpd_tls_security_level = encrypt``) with the
  certificate and key given (a PEM file each; make them with ``make_certificate``);
* offers AUTH only over TLS (``smtpd_tls_auth_only``) and requires it: unauthenticated clients
  are refused at RCPT (``smtpd_client_restrictions`` / ``smtpd_relay_restrictions`` =
  ``permit_sasl_authenticated, reject``, like Debian's ``submission`` entry in master.cf);
* checks passwords with Cyrus SASL against a private sasldb: ``cyrus_sasl_config_path`` points at
  ``<root>/etc/sasl/``, whose ``smtpd.conf`` says ``pwcheck_method: auxprop``, ``auxprop_plugin:
  sasldb``, ``mech_list: PLAIN LOGIN``, ``sasldb_path: <root>/etc/sasl/sasldb2``. The users are
  created there with ``saslpasswd2 -f <sasldb> -p -c -u <domain> <local part>``.

No service is chrooted (the base instance's master.cf), so smtpd reads the SASL config and the
sasldb at their real paths; the sasldb belongs to root and the ``postfix`` group, mode 0640,
because smtpd runs as ``postfix``. A ``tlsmgr`` service is added to master.cf: smtpd asks it for
PRNG seed and the TLS session cache.

Needs, besides Postfix and root: Debian's ``sasl2-bin`` (``saslpasswd2``) and
``libsasl2-modules`` / ``libsasl2-modules-db`` (the PLAIN, LOGIN and sasldb plugins). See
``submission_unavailable()``.
"""

from __future__ import annotations

import grp
import os
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from tests.support.postfix import PostfixError, PostfixInstance, find_program, postfix_unavailable

SASL_PLUGIN_DIRS = (
    "/usr/lib/x86_64-linux-gnu/sasl2",
    "/usr/lib/aarch64-linux-gnu/sasl2",
    "/usr/lib/sasl2",
    "/usr/lib64/sasl2",
)
SASL_APT = "apt-get install sasl2-bin libsasl2-modules libsasl2-modules-db"


def _sasl_plugin_dir() -> Path | None:
    for folder in SASL_PLUGIN_DIRS:
        if (Path(folder) / "libsasldb.so.2").exists():
            return Path(folder)
    return None


def submission_unavailable() -> str | None:
    """Why a SASL-enabled private Postfix cannot run here (a skip reason), or None if it can."""
    reason = postfix_unavailable()
    if reason:
        return reason
    if find_program("saslpasswd2") is None:
        return f"saslpasswd2 is missing (Debian: {SASL_APT})"
    plugins = _sasl_plugin_dir()
    if plugins is None:
        return f"the Cyrus SASL sasldb plugin is missing (Debian: {SASL_APT})"
    if not (plugins / "libplain.so.2").exists() or not (plugins / "liblogin.so.2").exists():
        return f"the Cyrus SASL PLAIN/LOGIN plugins are missing (Debian: {SASL_APT})"
    postconf = find_program("postconf")
    if postconf is None:
        return "postconf is missing"
    proc = subprocess.run([postconf, "-a"], capture_output=True, text=True, timeout=30,
                          check=False)
    if "cyrus" not in proc.stdout.split():
        return "this Postfix was built without Cyrus SASL server support (postconf -a)"
    return None


def make_certificate(folder: Path, *names: str, rsa: bool = False) -> tuple[Path, Path, Path]:
    """A test CA and a server certificate for ``names`` (default 127.0.0.1 and localhost).

    Returns (certificate chain PEM, private key PEM, CA PEM). Uses trustme (a test dependency).
    """
    import trustme

    key_type = trustme.KeyType.RSA if rsa else trustme.KeyType.ECDSA
    ca = trustme.CA(key_type=key_type)
    leaf = ca.issue_cert(*(names or ("127.0.0.1", "localhost")), key_type=key_type)
    folder.mkdir(parents=True, exist_ok=True)
    cert, key, ca_pem = folder / "cert.pem", folder / "key.pem", folder / "ca.pem"
    for blob in leaf.cert_chain_pems:
        with cert.open("ab") as out:
            out.write(blob.bytes())
    leaf.private_key_pem.write_to_path(str(key))
    ca.cert_pem.write_to_path(str(ca_pem))
    # Read by Postfix's smtpd (user postfix) and by mailferry: the key is not secret here.
    for path in (cert, key, ca_pem):
        path.chmod(0o644)
    return cert, key, ca_pem


SMTPD_CONF = """\
# Cyrus SASL configuration for this private Postfix's smtpd (smtpd_sasl_path = smtpd)
pwcheck_method: auxprop
auxprop_plugin: sasldb
mech_list: PLAIN LOGIN
sasldb_path: {sasldb}
"""


@dataclass
class SubmissionPostfix(PostfixInstance):
    """A private Postfix submission server; see the module doc.

    ``logins`` maps full addresses (``user@domain``) to passwords; they are created in the
    private sasldb before the start. ``cert_file``/``key_file`` are PEM files.
    """

    cert_file: Path | None = None
    key_file: Path | None = None
    logins: dict[str, str] = field(default_factory=dict)

    @property
    def sasl_dir(self) -> Path:
        # Debian's Postfix looks for smtpd.conf in $config_directory/sasl whatever
        # cyrus_sasl_config_path says (seen with strace on 3.7.11): use that folder for both.
        return self.config_dir / "sasl"

    @property
    def sasldb(self) -> Path:
        return self.sasl_dir / "sasldb2"

    def main_cf(self) -> dict[str, str]:
        if self.cert_file is None or self.key_file is None:
            raise PostfixError("SubmissionPostfix needs cert_file and key_file")
        params = super().main_cf()
        params.update({
            "smtpd_tls_security_level": "encrypt",
            "smtpd_tls_cert_file": str(Path(self.cert_file).resolve()),
            "smtpd_tls_key_file": str(Path(self.key_file).resolve()),
            "smtpd_tls_loglevel": "0",
            "smtpd_tls_auth_only": "yes",
            "smtpd_sasl_auth_enable": "yes",
            "smtpd_sasl_type": "cyrus",
            "smtpd_sasl_path": "smtpd",
            "cyrus_sasl_config_path": str(self.sasl_dir),
            "smtpd_sasl_security_options": "noanonymous",
            "smtpd_sasl_authenticated_header": "no",
            "smtpd_client_restrictions": "permit_sasl_authenticated, reject",
            "smtpd_relay_restrictions": "permit_sasl_authenticated, reject",
            "smtpd_recipient_restrictions": "",
            "broken_sasl_auth_clients": "no",
        })
        params.update(self.extra_main_cf)
        return params

    def master_cf(self) -> str:
        tlsmgr = "tlsmgr    unix  -       -       n       1000?   1       tlsmgr\n"
        return super().master_cf() + tlsmgr

    def write_config(self) -> None:
        super().write_config()
        self.sasl_dir.mkdir(exist_ok=True)
        self.sasl_dir.chmod(0o755)
        (self.sasl_dir / "smtpd.conf").write_text(SMTPD_CONF.format(sasldb=self.sasldb))
        self.sasldb.unlink(missing_ok=True)
        for address, password in self.logins.items():
            self.add_login(address, password)
        if not self.sasldb.exists():  # no logins: an empty database still has to open
            self.sasldb.touch()
        os.chown(self.sasldb, 0, grp.getgrnam("postfix").gr_gid)
        self.sasldb.chmod(0o640)

    def add_login(self, address: str, password: str) -> None:
        """Create (or replace) ``address`` in the private sasldb with ``password``."""
        local, _, domain = address.rpartition("@")
        program = find_program("saslpasswd2")
        if program is None or not local:
            raise PostfixError(f"cannot add SASL login {address!r} (saslpasswd2: {program})")
        proc = subprocess.run(
            [program, "-f", str(self.sasldb), "-p", "-c", "-u", domain, local],
            input=password + "\n", capture_output=True, text=True, timeout=30, check=False,
        )
        if proc.returncode != 0:
            raise PostfixError(f"saslpasswd2 exited {proc.returncode}: "
                               f"{(proc.stdout + proc.stderr).strip()}")
