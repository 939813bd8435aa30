"""Security finding 2: one address policy for every outbound request, refusing non-public targets by default.

The same list of addresses is refused by web_fetch and by webhook deliveries, before any connection
(nothing here sends traffic anywhere), unless the operator allows the range. Servers used here listen on
127.0.0.1 and are reached only where a test allows that range explicitly.
"""

import datetime
import ipaddress
import os
import socket
import ssl
import subprocess
import sys
import threading
from http.server import ThreadingHTTPServer

import httpx
import pytest
from cryptography import x509  # installed with Daphne's TLS stack
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from beamclaw_project.infra import address_policy
from cron.delivery import DeliveryError, DeliveryTargetError, deliver_parse, webhook_send
from tests.conftest import ROOT, http_server
from tests.security.conftest import PeerHandler
from tools.builtins.web_fetch import run_web_fetch

NON_PUBLIC = [
    "127.0.0.1",
    "127.8.9.10",
    "::1",
    "10.0.0.1",
    "172.16.5.4",
    "192.168.1.1",
    "100.64.0.1",  # shared address space (carrier-grade NAT)
    "100.100.100.200",  # Alibaba Cloud metadata
    "169.254.169.254",  # AWS, GCP, Azure metadata
    "fd00:ec2::254",  # AWS metadata over IPv6
    "fc00::1",
    "fe80::1",
    "0.0.0.0",
    "::",
    "224.0.0.1",
    "ff02::1",
    "240.0.0.1",
    "255.255.255.255",
    "192.0.2.1",
    "198.18.0.1",
    "::ffff:10.0.0.1",  # IPv4-mapped
    "64:ff9b::a9fe:a9fe",  # NAT64 of 169.254.169.254
    "2002:a9fe:a9fe::1",  # 6to4 of 169.254.169.254
    "2002:7f00:1::",  # 6to4 of 127.0.0.1
    "2001:0:4136:e378:8000:63bf:f5ff:fffe",  # Teredo, client 10.0.0.1
]


def url_for(address: str, path: str = "/") -> str:
    host = f"[{address}]" if ":" in address else address
    return f"http://{host}{path}"


@pytest.fixture
def default_policy(settings):
    """The production default: no range allowed, no named host allowed."""
    settings.BEAMCLAW_OUTBOUND = {"ALLOW_CIDRS": []}
    settings.BEAMCLAW_TOOLS = {**settings.BEAMCLAW_TOOLS, "WEB_FETCH_ALLOW_HOSTS": []}
    return settings


@pytest.mark.parametrize("address", NON_PUBLIC)
def test_every_outbound_path_refuses_non_public_addresses_by_default(default_policy, address):
    url = url_for(address, "/latest/meta-data/")
    assert address_policy.non_public_reason(ipaddress.ip_address(address))
    fetched = run_web_fetch(None, {"url": url})
    assert fetched["ok"] is False and "refused to fetch" in fetched["error"], fetched
    assert "BEAMCLAW_OUTBOUND_ALLOW_CIDRS" in fetched["error"], "the refusal says how an operator allows a range"
    with pytest.raises(DeliveryTargetError, match="Webhook refused"):
        deliver_parse(url)
    with pytest.raises(DeliveryError, match="refused") as refused:
        webhook_send(target={"url": url}, payload={}, delivery_id="t")
    assert refused.value.transient is False


def test_public_addresses_pass(default_policy):
    for address in ("93.184.216.34", "1.1.1.1", "2606:4700:4700::1111"):
        assert address_policy.check_url(url_for(address)).address == address


def test_legacy_ipv4_spellings_are_the_address_they_denote(default_policy):
    for spelling in ("2130706433", "0x7f000001", "127.1", "0x7f.1"):
        with pytest.raises(address_policy.TargetRefused, match="loopback"):
            address_policy.check_url(f"http://{spelling}:8400/health")
        with pytest.raises(DeliveryTargetError, match="loopback"):
            deliver_parse(f"http://{spelling}:8400/health")


def test_an_operator_range_admits_exactly_that_range(settings):
    settings.BEAMCLAW_OUTBOUND = {"ALLOW_CIDRS": ["10.0.0.0/8", "fd00:ec2::/32"]}
    assert address_policy.check_url("http://10.20.30.40/hook").address == "10.20.30.40"
    assert deliver_parse("http://10.20.30.40/hook")
    assert address_policy.check_url("http://[fd00:ec2::254]/").address == "fd00:ec2::254"
    for other in ("127.0.0.1", "169.254.169.254", "192.168.1.1", "100.100.100.200", "fd00:ec3::1", "::ffff:127.0.0.1"):
        with pytest.raises(address_policy.TargetRefused):
            address_policy.check_url(url_for(other))


class _Redirector(PeerHandler):
    def do_GET(self):
        self.server.hits.append(self.path)
        if self.path.startswith("/to?"):
            self.answer(302, headers={"Location": self.path[len("/to?"):]})
        else:
            self.answer()


@pytest.fixture
def redirector():
    with http_server(_Redirector) as server:
        yield server


def test_the_shared_client_checks_every_redirect_before_following_it(settings, redirector):
    """What a future caller (channel callbacks, fetched images) gets from `address_policy.client`."""
    settings.BEAMCLAW_OUTBOUND = {"ALLOW_CIDRS": ["127.0.0.1/32"]}
    base = f"http://127.0.0.1:{redirector.server_address[1]}"
    with address_policy.client(follow_redirects=True, timeout=10) as client:
        assert client.get(f"{base}/to?/landed").status_code == 200
        assert redirector.hits == ["/to?/landed", "/landed"]
        for target in ("http://169.254.169.254/latest/meta-data/", "http://10.0.0.1/", "http://[::1]/", "http://127.0.0.2/"):
            with pytest.raises(address_policy.TargetRefused):
                client.get(f"{base}/to?{target}")
    assert redirector.hits[2:] == [f"/to?{target}" for target in
                                   ("http://169.254.169.254/latest/meta-data/", "http://10.0.0.1/", "http://[::1]/", "http://127.0.0.2/")]


def _settings_process(**env) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if k not in ("BEAMCLAW_OUTBOUND_ALLOW_CIDRS", "BEAMCLAW_CRON_WEBHOOK_ALLOW_PRIVATE")}
    code = (
        "import django; django.setup(); from beamclaw_project.infra import address_policy as p\n"
        "try:\n    p.check_url('http://127.0.0.1:8400/health')\nexcept p.TargetRefused as exc:\n    print('REFUSED', exc.message)"
    )
    return subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60,
        env={**clean, "DJANGO_SETTINGS_MODULE": "beamclaw_project.settings", **env},
    )


def test_a_process_with_default_settings_refuses_loopback():
    """The settings a deployment starts with, in a process of their own: no allowance, loopback refused."""
    result = _settings_process()
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("REFUSED 127.0.0.1 is a loopback address"), result.stdout


def test_misconfigured_allowances_stop_the_process_with_a_fix():
    bad = _settings_process(BEAMCLAW_OUTBOUND_ALLOW_CIDRS="10.0.0.5/8")
    assert bad.returncode != 0 and "BEAMCLAW_OUTBOUND_ALLOW_CIDRS: '10.0.0.5/8' is not a network" in bad.stderr
    old = _settings_process(BEAMCLAW_CRON_WEBHOOK_ALLOW_PRIVATE="true")
    assert old.returncode != 0 and "BEAMCLAW_CRON_WEBHOOK_ALLOW_PRIVATE was removed" in old.stderr
    assert "BEAMCLAW_OUTBOUND_ALLOW_CIDRS" in old.stderr


def _tls_context_for(name: str, tmp_path):
    """A server context with a certificate for `name`, and a client context trusting its CA only."""
    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
          .serial_number(1).not_valid_before(now).not_valid_after(now + datetime.timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True).sign(ca_key, hashes.SHA256()))
    leaf = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
            .issuer_name(ca_name).public_key(key.public_key()).serial_number(2).not_valid_before(now)
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False).sign(ca_key, hashes.SHA256()))
    (tmp_path / "ca.pem").write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    (tmp_path / "leaf.pem").write_bytes(leaf.public_bytes(serialization.Encoding.PEM) + key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    server_context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_context.load_cert_chain(tmp_path / "leaf.pem")
    return server_context, ssl.create_default_context(cafile=str(tmp_path / "ca.pem"))


class _EchoHost(PeerHandler):
    def do_GET(self):
        self.answer(body=self.headers.get("Host", "").encode())


@pytest.mark.parametrize("certificate_for, verified", [("pinned.test", True), ("someone-else.test", False)])
def test_https_through_the_pin_keeps_the_name_for_sni_and_the_certificate(settings, monkeypatch, tmp_path, certificate_for, verified):
    """The connection goes to the checked IP, yet TLS is about the name: the server sees the name in SNI
    and the Host header, and a certificate for another name is rejected."""
    settings.BEAMCLAW_OUTBOUND = {"ALLOW_CIDRS": ["127.0.0.1/32"]}
    server_context, client_context = _tls_context_for(certificate_for, tmp_path)
    sni_seen = []
    server_context.sni_callback = lambda sock, server_name, ctx: sni_seen.append(server_name)
    server = ThreadingHTTPServer(("127.0.0.1", 0), _EchoHost)
    server.socket = server_context.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    port = server.server_address[1]
    real = socket.getaddrinfo

    def resolve(host, *args, **kwargs):  # the name exists only for this test
        if host == "pinned.test":
            return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("127.0.0.1", port))]
        return real(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", resolve)
    try:
        with address_policy.client(verify=client_context, timeout=10) as client:
            if verified:
                response = client.get(f"https://pinned.test:{port}/")
                assert response.status_code == 200 and response.text == f"pinned.test:{port}"
            else:
                with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED|certificate"):
                    client.get(f"https://pinned.test:{port}/")
        assert sni_seen and sni_seen[0] == "pinned.test"
    finally:
        server.shutdown()
        server.server_close()
