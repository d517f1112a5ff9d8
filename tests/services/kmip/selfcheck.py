"""Prove a running PyKMIP test server works, with PyKMIP's own Python client.

    python selfcheck.py STATE_DIR PORT [--capture-dir DIR]

STATE_DIR is the one given to start-pykmip.sh (holds ca.pem, client.pem, ...).
With --capture-dir, the exact request/response bytes of the main operations are
written there as NN-name.request.hex / .response.hex plus an annotated .txt tree.

Exits 0 when every check passed; prints one line per check and a final
"kmip selfcheck: N passed, 0 failed".
"""
import argparse
import logging
import os
import socket
import ssl
import sys
import threading
import traceback
import warnings

warnings.filterwarnings("ignore")
logging.disable(logging.CRITICAL)  # PyKMIP client logs "Config file ... not found" etc.

from cryptography.hazmat.primitives.ciphers.aead import AESGCM  # noqa: E402
from kmip import enums  # noqa: E402
from kmip.core import attributes as core_attributes  # noqa: E402
from kmip.core import exceptions as core_exceptions  # noqa: E402
from kmip.core.messages import payloads  # noqa: E402
from kmip.pie import client as pie_client  # noqa: E402
from kmip.pie import exceptions as pie_exceptions  # noqa: E402
from kmip.pie import objects  # noqa: E402
from kmip.services import kmip_protocol  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import ttlv_dump  # noqa: E402

# --------------------------------------------------------------------------
# Byte capture: every KMIPProtocol.write / read is recorded.
TRAFFIC = []
_orig_write = kmip_protocol.KMIPProtocol.write
_orig_read = kmip_protocol.KMIPProtocol.read


def _write(self, data):
    TRAFFIC.append(("request", bytes(data)))
    return _orig_write(self, data)


def _read(self):
    data = _orig_read(self)
    TRAFFIC.append(("response", bytes(data.buffer)))
    return data


kmip_protocol.KMIPProtocol.write = _write
kmip_protocol.KMIPProtocol.read = _read


class Capture:
    counter = 0

    def __init__(self, capture_dir, name, note=""):
        self.capture_dir, self.name, self.note = capture_dir, name, note

    def __enter__(self):
        del TRAFFIC[:]
        return self

    def __exit__(self, *exc):
        if not self.capture_dir or exc[0] is not None:
            return False
        Capture.counter += 1
        base = os.path.join(self.capture_dir, "%02d-%s" % (Capture.counter, self.name))
        txt = []
        if self.note:
            txt.append("# " + self.note.replace("\n", "\n# ") + "\n")
        for kind, data in TRAFFIC:
            with open("%s.%s.hex" % (base, kind), "w") as f:
                f.write(data.hex() + "\n")
            txt.append("## %s (%d bytes)\n" % (kind, len(data)))
            txt.append(ttlv_dump.render(data))
        with open(base + ".txt", "w") as f:
            f.write("\n".join(txt))
        return False


# --------------------------------------------------------------------------
RESULTS = []


def check(name, fn):
    try:
        info = fn()
        RESULTS.append((name, True))
        print("ok   %s%s" % (name, (": %s" % info) if info is not None else ""), flush=True)
        return info
    except Exception as e:  # noqa: BLE001
        RESULTS.append((name, False))
        print("FAIL %s: %r" % (name, e), flush=True)
        traceback.print_exc()
        return None


def fail_reason(e):
    """(status, reason, message) of a failed KMIP operation, as names."""
    status = getattr(e, "status", None)
    reason = getattr(e, "reason", None)
    message = getattr(e, "message", None) or (str(e.args[0]) if e.args else None)
    return "%s / %s / %r" % (
        getattr(status, "name", status), getattr(reason, "name", reason), message)


def make_client(state, port, who="client", version=enums.KMIPVersion.KMIP_1_4):
    c = pie_client.ProxyKmipClient(
        hostname="127.0.0.1",
        port=port,
        cert=os.path.join(state, who + ".pem"),
        key=os.path.join(state, who + ".key"),
        ca=os.path.join(state, "ca.pem"),
        ssl_version="PROTOCOL_TLSv1_2",
        config_file=None,
        kmip_version=version,
    )
    c.open()
    return c


def gcm_params(tag_length=16):
    return core_attributes.CryptographicParameters(
        block_cipher_mode=enums.BlockCipherMode.GCM,
        cryptographic_algorithm=enums.CryptographicAlgorithm.AES,
        tag_length=tag_length,
    )


def encrypt_gcm(c, uid, data, iv=None, aad=None, tag_length=16):
    p = payloads.EncryptRequestPayload(
        unique_identifier=uid,
        cryptographic_parameters=gcm_params(tag_length),
        data=data,
        iv_counter_nonce=iv,
        auth_additional_data=aad,
    )
    r = c.proxy.send_request_payload(enums.Operation.ENCRYPT, p)
    return r.data, r.iv_counter_nonce, r.auth_tag


def decrypt_gcm(c, uid, data, iv, tag, aad=None):
    p = payloads.DecryptRequestPayload(
        unique_identifier=uid,
        cryptographic_parameters=gcm_params(len(tag) if tag else 16),
        data=data,
        iv_counter_nonce=iv,
        auth_additional_data=aad,
        auth_tag=tag,
    )
    r = c.proxy.send_request_payload(enums.Operation.DECRYPT, p)
    return r.data


def expect_failure(fn):
    try:
        fn()
    except (core_exceptions.KmipError, pie_exceptions.KmipOperationFailure,
            core_exceptions.OperationFailure) as e:
        return fail_reason(e)
    raise AssertionError("expected a KMIP failure, got success")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("state_dir")
    ap.add_argument("port", type=int)
    ap.add_argument("--capture-dir")
    a = ap.parse_args()
    state, port, cap = a.state_dir, a.port, a.capture_dir
    if cap:
        os.makedirs(cap, exist_ok=True)

    c = make_client(state, port)
    ctx = {}

    def discover():
        with Capture(cap, "discover-versions", "DiscoverVersions, request at KMIP 1.4, empty payload"):
            versions = c.proxy.discover_versions()
        return [str(v) for v in versions.protocol_versions]
    check("DiscoverVersions", discover)

    def query():
        r = c.proxy.query(query_functions=[
            enums.QueryFunction.QUERY_OPERATIONS, enums.QueryFunction.QUERY_OBJECTS])
        ops = sorted(enums.Operation(getattr(o, "value", o)).name for o in r.operations)
        objs = sorted(enums.ObjectType(getattr(o, "value", o)).name for o in r.object_types)
        return {"operations": ops, "object_types": objs}
    check("Query operations/objects", query)

    def create():
        with Capture(cap, "create-aes256",
                     "Create SymmetricKey AES-256, usage mask Encrypt|Decrypt, Name "
                     "'snapcrypt-selfcheck' (KMIP 1.4)"):
            uid = c.create(enums.CryptographicAlgorithm.AES, 256,
                           name="snapcrypt-selfcheck",
                           cryptographic_usage_mask=[
                               enums.CryptographicUsageMask.ENCRYPT,
                               enums.CryptographicUsageMask.DECRYPT])
        ctx["uid"] = uid
        return "uid=%r" % uid
    check("Create AES-256", create)
    uid = ctx.get("uid")

    def get_attrs():
        with Capture(cap, "get-attributes", "GetAttributes (no names = all) of the created key"):
            _, attrs = c.get_attributes(uid)
        d = {a.attribute_name.value: a.attribute_value for a in attrs}
        state_ = d["State"].value
        assert state_ == enums.State.PRE_ACTIVE, state_
        return {k: str(getattr(v, "value", v))[:60] for k, v in d.items()}
    check("GetAttributes (fresh key is PreActive)", get_attrs)

    def enc_preactive():
        with Capture(cap, "encrypt-preactive-error",
                     "Encrypt with a PreActive key: an error response (ResultStatus OperationFailed,\n"
                     "ResultReason PermissionDenied, ResultMessage text) - a decoding test vector"):
            return expect_failure(lambda: encrypt_gcm(c, uid, b"x", iv=b"\0" * 12))
    check("Encrypt refused before Activate", enc_preactive)

    def activate():
        with Capture(cap, "activate", "Activate the created key"):
            c.activate(uid)
        _, attrs = c.get_attributes(uid, ["State"])
        assert attrs[0].attribute_value.value == enums.State.ACTIVE
        return "State=Active"
    check("Activate", activate)

    plaintext = b"snapcrypt data key: 32 bytes!!!!"
    iv12 = bytes(range(0x10, 0x1c))
    aad = b"snapcrypt-aad"

    def enc_dec():
        with Capture(cap, "encrypt-aes-gcm",
                     "Encrypt AES/GCM at KMIP 1.4: client-supplied 12-byte IV, AAD, TagLength 16.\n"
                     "Response carries Data (ciphertext, same length as plaintext) and\n"
                     "AuthenticatedEncryptionTag; no IVCounterNonce because the client supplied it."):
            ct, iv_back, tag = encrypt_gcm(c, uid, plaintext, iv=iv12, aad=aad)
        ctx["enc_req"] = next(d for k, d in TRAFFIC if k == "request")
        assert len(ct) == len(plaintext) and ct != plaintext
        assert iv_back is None, iv_back
        assert tag is not None and len(tag) == 16, tag
        with Capture(cap, "decrypt-aes-gcm",
                     "Decrypt AES/GCM at KMIP 1.4: same IV, AAD, AuthenticatedEncryptionTag"):
            pt = decrypt_gcm(c, uid, ct, iv12, tag, aad=aad)
        assert pt == plaintext
        ctx["ct"], ctx["tag"] = ct, tag
        return "ct=%d bytes, tag=%d bytes, IV not echoed" % (len(ct), len(tag))
    check("Encrypt/Decrypt AES-GCM (client IV, AAD)", enc_dec)

    def enc_server_iv():
        with Capture(cap, "encrypt-aes-gcm-server-iv",
                     "Encrypt AES/GCM without IVCounterNonce: the server makes a random IV of\n"
                     "16 bytes (AES block size, NOT the usual 12) and returns it in IVCounterNonce"):
            ct, iv_back, tag = encrypt_gcm(c, uid, plaintext)
        assert iv_back is not None
        assert decrypt_gcm(c, uid, ct, iv_back, tag) == plaintext
        return "server IV length=%d, tag=%d" % (len(iv_back), len(tag))
    check("Encrypt AES-GCM with server-generated IV", enc_server_iv)

    def short_tag():
        ct, _, tag = encrypt_gcm(c, uid, plaintext, iv=iv12, tag_length=12)
        assert len(tag) == 12
        assert decrypt_gcm(c, uid, ct, iv12, tag) == plaintext
        return "TagLength=12 -> 12-byte tag, decrypts"
    check("AES-GCM TagLength 12", short_tag)

    def no_tag_length():
        p = payloads.EncryptRequestPayload(
            unique_identifier=uid,
            cryptographic_parameters=core_attributes.CryptographicParameters(
                block_cipher_mode=enums.BlockCipherMode.GCM,
                cryptographic_algorithm=enums.CryptographicAlgorithm.AES),
            data=plaintext, iv_counter_nonce=iv12)
        return expect_failure(lambda: c.proxy.send_request_payload(enums.Operation.ENCRYPT, p))
    check("AES-GCM Encrypt without TagLength is refused", no_tag_length)

    def bad_tag():
        tag = bytearray(ctx["tag"])
        tag[0] ^= 1
        with Capture(cap, "decrypt-bad-tag-error",
                     "Decrypt AES/GCM with a corrupted tag: GeneralFailure (not CryptographicFailure)"):
            return expect_failure(lambda: decrypt_gcm(c, uid, ctx["ct"], iv12, bytes(tag), aad=aad))
    check("Decrypt with a wrong tag fails", bad_tag)

    def bad_aad():
        return expect_failure(lambda: decrypt_gcm(c, uid, ctx["ct"], iv12, ctx["tag"], aad=b"other"))
    check("Decrypt with a wrong AAD fails", bad_aad)

    # Known-answer vector: Register a fixed key, Encrypt with a fixed IV.
    known_key = bytes(range(32))

    def register_known():
        key = objects.SymmetricKey(
            enums.CryptographicAlgorithm.AES, 256, known_key,
            masks=[enums.CryptographicUsageMask.ENCRYPT, enums.CryptographicUsageMask.DECRYPT],
            name="snapcrypt-known-key")
        with Capture(cap, "register-known-aes256",
                     "Register SymmetricKey AES-256, key bytes 000102..1f (Raw), mask Encrypt|Decrypt,\n"
                     "Name 'snapcrypt-known-key'"):
            kuid = c.register(key)
        c.activate(kuid)
        ctx["kuid"] = kuid
        return "uid=%r" % kuid
    check("Register known AES-256 key", register_known)

    def known_answer():
        kuid = ctx["kuid"]
        with Capture(cap, "encrypt-aes-gcm-known",
                     "Encrypt AES/GCM with the known key 000102..1f, IV 101112..1b (12 bytes),\n"
                     "AAD 'snapcrypt-aad', plaintext 'snapcrypt data key: 32 bytes!!!!', TagLength 16.\n"
                     "Ciphertext||tag equals AESGCM(key).encrypt(iv, plaintext, aad) (checked)."):
            ct, _, tag = encrypt_gcm(c, kuid, plaintext, iv=iv12, aad=aad)
        expect = AESGCM(known_key).encrypt(iv12, plaintext, aad)
        assert ct + tag == expect, (ct.hex(), tag.hex(), expect.hex())
        with Capture(cap, "decrypt-aes-gcm-known", "Decrypt of the known-answer ciphertext above"):
            assert decrypt_gcm(c, kuid, ct, iv12, tag, aad=aad) == plaintext
        return "ct=%s tag=%s" % (ct.hex(), tag.hex())
    check("AES-GCM known answer matches local AES-GCM", known_answer)

    def get_known():
        with Capture(cap, "get-known-key", "Get of the registered known key (Raw key material back)"):
            obj = c.get(ctx["kuid"])
        assert obj.value == known_key
        return "key material round-trips"
    check("Get returns key material", get_known)

    def locate2():
        from kmip.core.factories import attributes as attr_factory
        f = attr_factory.AttributeFactory()
        name_attr = f.create_attribute(enums.AttributeType.NAME, "snapcrypt-selfcheck")
        with Capture(cap, "locate-by-name", "Locate with attribute Name = 'snapcrypt-selfcheck'"):
            found = c.locate(attributes=[name_attr])
        assert uid in found, found
        all_ids = c.locate()
        return "by name: %r; all: %r" % (found, all_ids)
    check("Locate", locate2)

    def raw_send(req):
        tctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        tctx.load_verify_locations(os.path.join(state, "ca.pem"))
        tctx.load_cert_chain(os.path.join(state, "client.pem"), os.path.join(state, "client.key"))
        with socket.create_connection(("127.0.0.1", port), timeout=10) as s_, \
                tctx.wrap_socket(s_, server_hostname="localhost") as t:
            t.sendall(req)
            buf = b""
            while len(buf) < 8 or len(buf) < 8 + int.from_bytes(buf[4:8], "big"):
                chunk = t.recv(65536)
                if not chunk:
                    break
                buf += chunk
        return buf

    def result_of(resp):
        """(minor version, ResultStatus name, ResultReason name or None) from raw response bytes."""
        text = ttlv_dump.render(resp)
        minor = next(l for l in text.splitlines() if "PROTOCOL_VERSION_MINOR" in l).split("= ")[-1]
        status = next(l for l in text.splitlines() if "RESULT_STATUS" in l).split("(")[-1].rstrip(")")
        reason = [l.split("(")[-1].rstrip(")") for l in text.splitlines() if "RESULT_REASON" in l]
        major = next(l for l in text.splitlines() if "PROTOCOL_VERSION_MAJOR" in l).split("= ")[-1]
        return "response v%s.%s %s%s" % (major, minor, status, (" / " + reason[0]) if reason else "")

    # Offsets in the Encrypt request PyKMIP builds (see captures/*encrypt-aes-gcm.txt):
    # 0x20..0x24 major, 0x30..0x34 minor, 0x80 BlockCipherMode item, 0x90 CryptographicAlgorithm item.
    def raw_out_of_order():
        req = bytearray(ctx["enc_req"])
        req[0x80:0x90], req[0x90:0xa0] = ctx["enc_req"][0x90:0xa0], ctx["enc_req"][0x80:0x90]
        r = result_of(raw_send(bytes(req)))
        assert "INVALID_MESSAGE" in r, r
        return "CryptographicAlgorithm before BlockCipherMode -> " + r
    check("Field order is enforced (raw TTLV)", raw_out_of_order)

    def raw_aad_at_13():
        req = bytearray(ctx["enc_req"])
        req[0x33] = 3
        r = result_of(raw_send(bytes(req)))
        assert "INVALID_MESSAGE" in r, r
        return "Encrypt with AAD in a KMIP 1.3 request -> " + r
    check("AAD/tag fields only parse at KMIP >= 1.4 (raw TTLV)", raw_aad_at_13)

    def raw_at_20():
        req = bytearray(ctx["enc_req"])
        req[0x23], req[0x33] = 2, 0
        resp = raw_send(bytes(req))
        r = result_of(resp)
        assert "SUCCESS" in r and "AUTHENTICATED_ENCRYPTION_TAG" in ttlv_dump.render(resp), r
        return "same Encrypt as KMIP 2.0 -> " + r + " with tag"
    check("Encrypt AES-GCM at KMIP 2.0 (raw TTLV)", raw_at_20)

    def gcm_at_12():
        c12 = make_client(state, port, version=enums.KMIPVersion.KMIP_1_2)
        try:
            try:
                ct, iv_back, tag = encrypt_gcm(c12, uid, plaintext, iv=iv12)
            except Exception as e:  # noqa: BLE001
                return "Encrypt GCM at 1.2 fails: %s" % fail_reason(e)
            return "Encrypt GCM at 1.2 succeeds but returns tag=%r (tag field only exists from KMIP 1.4)" % (tag,)
        finally:
            c12.close()
    check("AES-GCM at KMIP 1.2 (observation)", gcm_at_12)

    def enc_at_10():
        c10 = make_client(state, port, version=enums.KMIPVersion.KMIP_1_0)
        try:
            return expect_failure(lambda: encrypt_gcm(c10, uid, plaintext, iv=iv12))
        finally:
            c10.close()
    check("Encrypt refused at KMIP 1.0", enc_at_10)

    def versions_answer():
        out = {}
        for v in (enums.KMIPVersion.KMIP_1_0, enums.KMIPVersion.KMIP_1_1, enums.KMIPVersion.KMIP_1_2,
                  enums.KMIPVersion.KMIP_1_3, enums.KMIPVersion.KMIP_1_4, enums.KMIPVersion.KMIP_2_0):
            cv = make_client(state, port, version=v)
            try:
                cv.get_attributes(uid, ["State"]) if v != enums.KMIPVersion.KMIP_2_0 else cv.get(uid)
                out[v.name] = "ok"
            except Exception as e:  # noqa: BLE001
                out[v.name] = fail_reason(e) if hasattr(e, "status") else repr(e)[:80]
            finally:
                cv.close()
        return out
    check("GetAttributes/Get at every KMIP version", versions_answer)

    def other_identity():
        c2 = make_client(state, port, who="client2")
        try:
            return expect_failure(lambda: c2.get(uid))
        finally:
            c2.close()
    check("Another client CN cannot Get the key (owner = cert CN)", other_identity)

    def no_eku():
        c3 = make_client(state, port, who="client-noeku")
        try:
            with Capture(cap, "get-noeku-error",
                         "Get from a client whose cert lacks the clientAuth EKU: TLS succeeds, the KMIP\n"
                         "response is AuthenticationNotSuccessful and its header says ProtocolVersion 1.0\n"
                         "whatever the request's version"):
                return expect_failure(lambda: c3.get(uid))
        finally:
            c3.close()
    check("Client cert without clientAuth EKU: TLS ok, KMIP refused", no_eku)

    def wrong_ca_client():
        try:
            c4 = make_client(state, port, who="other-client")
            c4.get(uid)
        except (ssl.SSLError, ConnectionError, OSError) as e:
            return "TLS handshake refused: %r" % (e,)
        raise AssertionError("a client cert from another CA was accepted")
    check("Client cert from another CA is refused at TLS", wrong_ca_client)

    def wrong_ca_server():
        ctx_ = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx_.load_verify_locations(os.path.join(state, "other-ca.pem"))
        ctx_.load_cert_chain(os.path.join(state, "client.pem"), os.path.join(state, "client.key"))
        with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
            try:
                ctx_.wrap_socket(s, server_hostname="127.0.0.1")
            except ssl.SSLCertVerificationError as e:
                return "client rejects server: %s" % e.verify_message
        raise AssertionError("server cert verified against other-ca.pem")
    check("Client trusting another CA rejects the server", wrong_ca_server)

    def tls_facts():
        ctx_ = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx_.load_verify_locations(os.path.join(state, "ca.pem"))
        ctx_.load_cert_chain(os.path.join(state, "client.pem"), os.path.join(state, "client.key"))
        with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
            with ctx_.wrap_socket(s, server_hostname="localhost") as t:
                cipher = t.cipher()
                version = t.version()
        assert version == "TLSv1.2", version
        assert "ECDHE-ECDSA" in cipher[0] and "GCM" in cipher[0], cipher
        return "%s %s (hostname 'localhost' verifies; so does IP 127.0.0.1)" % (version, cipher[0])
    check("TLS 1.2 with ECDHE-ECDSA-AES-GCM negotiated", tls_facts)

    def concurrent():
        errors = []

        def worker(n):
            try:
                cc = make_client(state, port)
                try:
                    for i in range(5):
                        iv = os.urandom(12)
                        msg = ("worker %d msg %d" % (n, i)).encode()
                        ct, _, tag = encrypt_gcm(cc, uid, msg, iv=iv)
                        assert decrypt_gcm(cc, uid, ct, iv, tag) == msg
                finally:
                    cc.close()
            except Exception as e:  # noqa: BLE001
                errors.append(repr(e))
        ts = [threading.Thread(target=worker, args=(n,)) for n in range(4)]
        for t in ts:
            t.start()
        for t in ts:
            t.join()
        assert not errors, errors
        return "4 connections x 5 encrypt+decrypt ok"
    check("Concurrent clients", concurrent)

    def revoke_destroy():
        kuid = ctx["kuid"]
        with Capture(cap, "destroy-active", "Destroy of an Active key is refused (must Revoke first)"):
            reason = expect_failure(lambda: c.destroy(kuid))
        with Capture(cap, "revoke", "Revoke with reason CessationOfOperation"):
            c.revoke(enums.RevocationReasonCode.CESSATION_OF_OPERATION, kuid)
        enc_after = expect_failure(lambda: encrypt_gcm(c, kuid, plaintext, iv=iv12))
        with Capture(cap, "destroy", "Destroy after Revoke"):
            c.destroy(kuid)
        get_after = expect_failure(lambda: c.get(kuid))
        return {"destroy while active": reason, "encrypt after revoke": enc_after,
                "get after destroy": get_after}
    check("Revoke + Destroy", revoke_destroy)

    def rekey():
        return expect_failure(lambda: c.rekey(uid=uid))
    check("ReKey is not supported", rekey)

    c.close()
    passed = sum(1 for _, ok in RESULTS if ok)
    failed = len(RESULTS) - passed
    print("kmip selfcheck: %d passed, %d failed" % (passed, failed))
    return 0 if failed == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
