#!/usr/bin/env python3
"""Writes generated.txt: the generated half of the labelled detector corpus.

Deterministic (fixed seed); rerun with `python3 generate.py` from this directory after
changing it, and commit the output. The labels come from how each value is built here
(a valid Luhn number with a real IIN, a mod-97-valid IBAN, an SSN in the issued ranges,
...), never from the detectors under test.

Line format (shared with handwritten.txt, read by tests/corpus.rs):
  - one value per line; `#` starts a comment line; blank lines are skipped;
  - `[[detector|text]]` marks an expected finding: `text` is part of the value and
    `detector` must report it;
  - the character U+23CE (a return symbol) stands for a newline inside a value.
"""

import base64
import ipaddress
import json
import random
import string
import uuid

R = random.Random(20240517)
NL = "\u23ce"


def mark(det, text):
    return f"[[{det}|{text}]]"


def pick(xs):
    return R.choice(xs)


def digits(n):
    return "".join(R.choice(string.digits) for _ in range(n))


def alnum(n, alphabet=string.ascii_letters + string.digits):
    return "".join(R.choice(alphabet) for _ in range(n))


# ---------------------------------------------------------------------------------
# Credit cards

def luhn_complete(partial):
    """Appends the Luhn check digit."""
    total = 0
    for i, ch in enumerate(reversed(partial)):
        d = int(ch)
        if i % 2 == 0:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return partial + str((10 - total % 10) % 10)


def luhn_ok(number):
    total = 0
    for i, ch in enumerate(reversed(number)):
        d = int(ch)
        if i % 2 == 1:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return total % 10 == 0


BRANDS = [
    # (prefix generator, length)
    (lambda: "4", 16),
    (lambda: "4", 16),
    (lambda: "4", 13),
    (lambda: str(R.randint(51, 55)), 16),
    (lambda: str(R.randint(2221, 2720)), 16),
    (lambda: pick(["34", "37"]), 15),
    (lambda: pick(["6011", "65", str(R.randint(644, 649))]), 16),
    (lambda: str(R.randint(3528, 3589)), 16),
    (lambda: pick(["36", "38", str(R.randint(300, 305))]), 14),
    (lambda: "62", 16),
]


def card_number():
    prefix, length = pick(BRANDS)
    p = prefix()
    return luhn_complete(p + digits(length - len(p) - 1))


def card_text(number):
    n = len(number)
    style = R.random()
    if n == 16 and style < 0.4:
        sep = pick([" ", "-"])
        return sep.join(number[i:i + 4] for i in range(0, 16, 4))
    if n == 15 and style < 0.5:
        sep = pick([" ", "-"])
        return sep.join([number[:4], number[4:10], number[10:]])
    return number


# ---------------------------------------------------------------------------------
# SSN

def ssn():
    while True:
        area = R.randint(1, 899)
        if area != 666:
            break
    group = R.randint(1, 99)
    serial = R.randint(1, 9999)
    sep = "-" if R.random() < 0.8 else " "
    return f"{area:03d}{sep}{group:02d}{sep}{serial:04d}"


# ---------------------------------------------------------------------------------
# Phones

def nanp_parts():
    while True:
        area = f"{R.randint(2, 9)}{R.randint(0, 8)}{R.randint(0, 9)}"
        if area[1:] != "11":
            break
    while True:
        exchange = f"{R.randint(2, 9)}{digits(2)}"
        if exchange[1:] != "11":
            break
    return area, exchange, digits(4)


def phone():
    kind = R.randint(0, 11)
    a, e, l = nanp_parts()
    if kind == 0:
        return f"({a}) {e}-{l}"
    if kind == 1:
        return f"{a}-{e}-{l}"
    if kind == 2:
        return f"{a}.{e}.{l}"
    if kind == 3:
        return f"+1 {a} {e} {l}"
    if kind == 4:
        return f"1-{a}-{e}-{l}"
    if kind == 5:
        return f"+44 20 {digits(4)} {digits(4)}"
    if kind == 6:
        return pick([f"020 {digits(4)} {digits(4)}", f"07{digits(3)} {digits(6)}",
                     f"0161 {digits(3)} {digits(4)}"])
    if kind == 7:
        return pick([f"+49 30 {digits(6)}", f"+49 89 {digits(7)}", f"030 {digits(7)}",
                     f"0221 {digits(6)}"])
    if kind == 8:
        return pick([f"+33 1 {digits(2)} {digits(2)} {digits(2)} {digits(2)}",
                     "0" + str(R.randint(1, 9)) + " " + " ".join(digits(2) for _ in range(4)),
                     "0" + str(R.randint(1, 9)) + "." + ".".join(digits(2) for _ in range(4))])
    if kind == 9:
        return pick([f"+91 {R.randint(6, 9)}{digits(4)} {digits(5)}",
                     f"+61 2 {digits(4)} {digits(4)}", f"+81 3-{digits(4)}-{digits(4)}",
                     f"+86 138 {digits(4)} {digits(4)}", f"+34 91 {digits(3)} {digits(2)} {digits(2)}"])
    if kind == 10:
        return "+" + pick(["1", "44", "49", "33", "39", "31"]) + digits(R.randint(8, 10))
    return f"+44 (0)20 {digits(4)} {digits(4)}"


# ---------------------------------------------------------------------------------
# IBAN

IBAN_FORMATS = {
    # country: list of (kind, count): n = digits, a = upper letters, c = upper alnum
    "DE": [("n", 18)],
    "GB": [("a", 4), ("n", 14)],
    "FR": [("n", 10), ("c", 11), ("n", 2)],
    "ES": [("n", 20)],
    "IT": [("a", 1), ("n", 10), ("c", 12)],
    "NL": [("a", 4), ("n", 10)],
    "BE": [("n", 12)],
    "CH": [("n", 5), ("c", 12)],
    "AT": [("n", 16)],
    "PL": [("n", 24)],
    "SE": [("n", 20)],
    "PT": [("n", 21)],
    "IE": [("a", 4), ("n", 14)],
    "NO": [("n", 11)],
}


def mod97(s):
    rem = 0
    for ch in s:
        v = int(ch) if ch.isdigit() else ord(ch) - 55
        rem = int(str(rem) + str(v)) % 97
    return rem


def iban():
    country = pick(sorted(IBAN_FORMATS))
    bban = ""
    for kind, n in IBAN_FORMATS[country]:
        alphabet = {"n": string.digits, "a": string.ascii_uppercase,
                    "c": string.ascii_uppercase + string.digits}[kind]
        bban += alnum(n, alphabet)
    check = 98 - mod97(bban + country + "00")
    compact = f"{country}{check:02d}{bban}"
    assert mod97(compact[4:] + compact[:4]) == 1
    if R.random() < 0.5:
        return " ".join(compact[i:i + 4] for i in range(0, len(compact), 4))
    return compact


def bad_iban():
    good = iban().replace(" ", "")
    # Change one BBAN digit: the checksum no longer holds.
    for i in range(len(good) - 1, 4, -1):
        if good[i].isdigit():
            bad = good[:i] + str((int(good[i]) + 1) % 10) + good[i + 1:]
            if mod97(bad[4:] + bad[:4]) != 1:
                return bad
    return good[:4] + "X" + good[5:]


# ---------------------------------------------------------------------------------
# Addresses

def ipv4():
    kind = R.random()
    if kind < 0.3:
        return f"10.{R.randint(0, 255)}.{R.randint(0, 255)}.{R.randint(1, 254)}"
    if kind < 0.5:
        return f"192.168.{R.randint(0, 255)}.{R.randint(1, 254)}"
    return ".".join(str(R.randint(1 if i == 0 else 0, 255)) for i in range(4))


def ipv6():
    kind = R.random()
    if kind < 0.1:
        return "::1"
    if kind < 0.25:
        return f"::ffff:{R.randint(1, 223)}.{R.randint(0, 255)}.{R.randint(0, 255)}.{R.randint(1, 254)}"
    if kind < 0.45:
        return str(ipaddress.IPv6Address((0xFE80 << 112) | R.getrandbits(64)))
    if kind < 0.7:
        return str(ipaddress.IPv6Address((0x20010db8 << 96) | R.getrandbits(R.choice([16, 32, 64]))))
    addr = ipaddress.IPv6Address(R.getrandbits(128) | (0x2 << 124))
    return addr.exploded if R.random() < 0.5 else str(addr)


def email():
    first = pick(["john", "maria", "j.smith", "anna-lena", "wei.zhang", "o.connor", "dev",
                  "support", "billing", "k.tanaka", "priya_patel", "tom", "x"])
    local = first
    r = R.random()
    if r < 0.2:
        local += str(R.randint(1, 99))
    elif r < 0.3:
        local += "+" + pick(["news", "tag", "test"])
    domain = pick(["example.com", "example.org", "mail.example.co.uk", "corp-mail.io",
                   "sub.domain.example.net", "uni.example.edu", "example.de", "example.fr",
                   "startup.dev", "shop.example.store"])
    return f"{local}@{domain}"


# ---------------------------------------------------------------------------------
# Secrets

B32 = string.ascii_uppercase + "234567"
B64 = string.ascii_letters + string.digits + "/+"
B64URL = string.ascii_letters + string.digits + "-_"


def aws_access_key():
    return pick(["AKIA", "AKIA", "ASIA", "AROA", "AIDA"]) + alnum(16, B32)


def aws_secret():
    return alnum(40, B64)


def b64url(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def jwt():
    header = {"alg": pick(["HS256", "RS256", "ES256"]), "typ": "JWT"}
    if R.random() < 0.3:
        header["kid"] = alnum(8)
    payload = {"sub": str(R.randint(1000, 99999)), "iat": R.randint(1500000000, 1800000000)}
    if R.random() < 0.5:
        payload["name"] = pick(["Jane Doe", "John Roe", "svc-batch"])
    if R.random() < 0.5:
        payload["scope"] = pick(["read", "read write", "admin"])
    sig = alnum(pick([43, 86]), B64URL)
    return ".".join([b64url(json.dumps(header, separators=(",", ":")).encode()),
                     b64url(json.dumps(payload, separators=(",", ":")).encode()), sig])


def pem(label, lines=4, end=True, newline=NL):
    body = newline.join(alnum(64, B64) for _ in range(lines))
    text = f"-----BEGIN {label}PRIVATE KEY-----{newline}{body}"
    if end:
        text += f"{newline}-----END {label}PRIVATE KEY-----"
    return text


def api_token():
    kind = R.randint(0, 9)
    if kind == 0:
        return pick(["ghp_", "gho_", "ghs_"]) + alnum(36)
    if kind == 1:
        return "github_pat_" + alnum(22) + "_" + alnum(59)
    if kind == 2:
        return "xoxb-" + digits(12) + "-" + digits(13) + "-" + alnum(24)
    if kind == 3:
        return pick(["sk_live_", "rk_live_", "sk_test_"]) + alnum(pick([24, 32, 99]))
    if kind == 4:
        return "glpat-" + alnum(20, B64URL)
    if kind == 5:
        return "AIza" + alnum(35, B64URL)
    if kind == 6:
        return "npm_" + alnum(36)
    if kind == 7:
        return "SG." + alnum(22, B64URL) + "." + alnum(43, B64URL)
    if kind == 8:
        return "slu_" + alnum(8, string.ascii_lowercase + string.digits) + "_" + alnum(32)
    return "xapp-1-" + alnum(11, string.ascii_uppercase + string.digits) + "-" + digits(13) + "-" + alnum(64, "0123456789abcdef")


# ---------------------------------------------------------------------------------
# Templates that embed a finding in realistic surroundings

NAMES = ["Maria Garcia", "John Smith", "Wei Zhang", "Anna Müller", "Olu Adeyemi",
         "Priya Patel", "Tom O'Brien", "Chloé Dubois", "Kenji Tanaka", "Sofia Rossi"]


def templates(det, text):
    m = mark(det, text)
    name = pick(NAMES)
    ts = f"2024-{R.randint(1, 12):02d}-{R.randint(1, 28):02d}T{R.randint(0, 23):02d}:{R.randint(0, 59):02d}:{R.randint(0, 59):02d}Z"
    key = {"email": "email", "credit_card": "card_number", "us_ssn": "ssn", "phone": "phone",
           "iban": "iban", "ipv4": "client_ip", "ipv6": "addr", "aws_access_key": "aws_access_key_id",
           "aws_secret_key": "aws_secret_access_key", "jwt": "token", "private_key": "key",
           "api_token": "token"}[det]
    options = [
        m,
        f"{name}: {m}",
        f"Please update my details, {m} is the one to use. Thanks, {name.split()[0]}",
        f'{{"id":{R.randint(1, 99999)},"{key}":"{m}","updated_at":"{ts}"}}',
        f"{ts} INFO  api: request from {name.split()[0].lower()} {key}={m} status=200 dur={R.randint(1, 900)}ms",
        f"{R.randint(1, 9999)},\"{name}\",{m},{pick(['active', 'pending', 'closed'])}",
        f"Note from call on {ts[:10]}: customer gave {m} — verify before shipping.",
        f"<td>{m}</td>",
    ]
    return pick(options)


def positives():
    out = []
    for _ in range(45):
        out.append(templates("email", email()))
    for _ in range(45):
        out.append(templates("credit_card", card_text(card_number())))
    for _ in range(40):
        out.append(templates("us_ssn", ssn()))
    for _ in range(60):
        out.append(templates("phone", phone()))
    for _ in range(40):
        out.append(templates("iban", iban()))
    for _ in range(40):
        out.append(templates("ipv4", ipv4()))
    for _ in range(40):
        out.append(templates("ipv6", ipv6()))
    for _ in range(30):
        out.append(templates("aws_access_key", aws_access_key()))
    for _ in range(30):
        out.append(templates("aws_secret_key", aws_secret()))
    for _ in range(30):
        out.append(templates("jwt", jwt()))
    for label in ["", "RSA ", "EC ", "OPENSSH ", "ENCRYPTED ", "DSA ", "", "RSA "]:
        out.append("config:" + NL + mark("private_key", pem(label, R.randint(2, 6))) + NL + "# end")
    for label in ["", "RSA ", "EC "]:
        # As stored in JSON: a literal backslash-n, not a newline.
        out.append('{"private_key":"' + mark("private_key", pem(label, 3, newline="\\n")) + '","kid":"' + alnum(8) + '"}')
    for label in ["RSA ", ""]:
        # Truncated: the END line is missing.
        out.append("pasted: " + mark("private_key", pem(label, 2, end=False)))
    for _ in range(40):
        out.append(templates("api_token", api_token()))
    # Several findings in one value.
    for _ in range(15):
        out.append(f"{pick(NAMES)}, {mark('email', email())}, tel {mark('phone', phone())}, "
                   f"card {mark('credit_card', card_text(card_number()))}, from {mark('ipv4', ipv4())}")
    for _ in range(10):
        out.append(f"[default]{NL}aws_access_key_id = {mark('aws_access_key', aws_access_key())}{NL}"
                   f"aws_secret_access_key = {mark('aws_secret_key', aws_secret())}{NL}region = eu-west-1")
    for _ in range(10):
        out.append(f"wire to {mark('iban', iban())} ref INV-{R.randint(2020, 2025)}-{digits(5)}, "
                   f"SSN on file {mark('us_ssn', ssn())}")
    return out


# ---------------------------------------------------------------------------------
# Realistic negatives: things that look a little like findings and are not.

def negatives():
    out = []
    for _ in range(25):
        # Order numbers, account ids, tracking numbers: plain long integers.
        out.append(pick(["Order #", "Invoice ", "Account ", "Ticket ", "Ref "]) + digits(R.randint(6, 12)))
    for _ in range(30):
        # 16-digit numbers that are not cards (some will happen to look exactly like
        # one: a known IIN and a valid Luhn digit; those are honest false positives).
        n = digits(16)
        out.append(pick(["shipment ", "parcel ", "batch ", "serial no. "]) + n)
    for _ in range(15):
        # Card-shaped numbers with a wrong check digit (typos).
        good = card_number()
        bad = good[:-1] + str((int(good[-1]) + R.randint(1, 9)) % 10)
        assert not luhn_ok(bad)
        out.append("card (declined, invalid number): " + card_text(bad))
    for _ in range(20):
        out.append(f"{R.randint(2019, 2025)}-{R.randint(1, 12):02d}-{R.randint(1, 28):02d} "
                   f"{R.randint(0, 23):02d}:{R.randint(0, 59):02d}:{R.randint(0, 59):02d}.{digits(3)}")
    for _ in range(10):
        out.append(f"{R.randint(1, 28):02d}/{R.randint(1, 12):02d}/{R.randint(2019, 2025)} "
                   f"at {R.randint(0, 23):02d}:{R.randint(0, 59):02d}")
    for _ in range(15):
        out.append(f"v{R.randint(0, 9)}.{R.randint(0, 40)}.{R.randint(0, 99)}"
                   + pick(["", "-rc.1", "-beta", "+build.5"]))
    for _ in range(8):
        out.append(f"version {R.randint(1, 12)}.{R.randint(0, 9)}.{R.randint(0, 9)}.{R.randint(0, 200)}")
    for _ in range(15):
        out.append(pick(["Total: $", "Price ", "EUR ", "amount="]) + f"{R.randint(0, 99999)}.{digits(2)}")
    for _ in range(15):
        out.append(str(uuid.UUID(int=R.getrandbits(128), version=4)))
    for _ in range(10):
        out.append("sha1 " + alnum(40, "0123456789abcdef"))
    for _ in range(8):
        out.append("sha256:" + alnum(64, "0123456789abcdef"))
    for _ in range(8):
        out.append("commit " + alnum(40, "0123456789abcdef") + " Merge branch 'main'")
    for _ in range(8):
        out.append("data:image/png;base64," + alnum(R.randint(60, 120), B64) + "==")
    for _ in range(10):
        out.append(f"SKU {alnum(2, string.ascii_uppercase)}-{digits(4)}-{alnum(3, string.ascii_uppercase)}, qty {R.randint(1, 50)}")
    for _ in range(10):
        out.append(f"mac {':'.join(alnum(2, '0123456789abcdef') for _ in range(6))}")
    for _ in range(10):
        out.append(f"lat {R.uniform(-90, 90):.6f}, lon {R.uniform(-180, 180):.6f}")
    for _ in range(10):
        # Invalid SSNs: area 000, 666, 9xx, group 00, serial 0000.
        out.append("ref " + pick([f"000-{R.randint(1, 99):02d}-{R.randint(1, 9999):04d}",
                                  f"666-{R.randint(1, 99):02d}-{R.randint(1, 9999):04d}",
                                  f"9{digits(2)}-{R.randint(1, 99):02d}-{R.randint(1, 9999):04d}",
                                  f"{R.randint(1, 665):03d}-00-{R.randint(1, 9999):04d}",
                                  f"{R.randint(1, 665):03d}-{R.randint(1, 99):02d}-0000"]))
    for _ in range(10):
        out.append("IBAN (rejected by bank, check digits wrong): " + bad_iban())
    for _ in range(8):
        out.append(f"OID {'.'.join(str(R.randint(1, 40)) for _ in range(R.randint(6, 9)))}")
    for _ in range(8):
        out.append(f"{R.randint(256, 999)}.{R.randint(0, 255)}.{R.randint(0, 255)}.{R.randint(0, 255)} is not an address")
    for _ in range(8):
        out.append(f"elapsed {R.randint(0, 23):02d}:{R.randint(0, 59):02d}:{R.randint(0, 59):02d}, ratio {pick(['16:9', '4:3', '21:9'])}")
    for _ in range(8):
        out.append(f"ZIP {R.randint(10000, 99999)}-{digits(4)}")
    for _ in range(8):
        out.append(f"ISBN 978-{R.randint(0, 9)}-{digits(3)}-{digits(5)}-{R.randint(0, 9)}")
    for _ in range(8):
        out.append(f"https://example.com/api/v1/users/{R.randint(1, 99999)}/orders?page={R.randint(1, 20)}&sort=desc")
    for _ in range(8):
        out.append(f"/var/lib/app/{alnum(8, string.ascii_lowercase)}/{R.randint(2019, 2025)}/{alnum(12, string.ascii_lowercase + string.digits)}.log")
    for _ in range(8):
        out.append(f"#{alnum(6, '0123456789abcdef')} and rgb({R.randint(0, 255)}, {R.randint(0, 255)}, {R.randint(0, 255)})")
    for _ in range(8):
        out.append(f"phone: n/a, ext. {R.randint(100, 9999)}, room {R.randint(100, 999)}")
    return out


def main():
    lines = ["# Generated by generate.py; do not edit by hand."]
    lines.append("# --- positives ---")
    lines.extend(positives())
    lines.append("# --- negatives ---")
    lines.extend(negatives())
    with open("generated.txt", "w", encoding="utf-8") as f:
        for line in lines:
            assert "\n" not in line, line
            f.write(line + "\n")


if __name__ == "__main__":
    main()
