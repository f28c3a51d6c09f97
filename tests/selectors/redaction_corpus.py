"""Planted secrets and personal data, and lookalikes that must survive, for the redaction tests and
``evals/bench_redact.py``. Every value is fake: documented test card numbers, example keys, fictional
phone ranges where the numbering plan has them."""

from __future__ import annotations

from typing import NamedTuple


class Planted(NamedTuple):
    kind: str  # the placeholder kind the value must become
    secret: str  # the exact text that must not survive
    text: str  # a realistic layout containing it


_JWT = (
    "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiIxMjM0NTY3ODkwIiwibmFtZSI6IkphbmUgRG9lIiwiaWF0IjoxNTE2MjM5MDIyfQ"
    ".SflKxwRJSMeKKF2QT4fwpMeJf36POk6yJV_adQssw5c"
)
_PEM_BODY = "MIIEowIBAAKCAQEAu1SU1LfVLPHCozMxH2Mo4lgOEePzNm0tRgeLezV6ffAt0gunVTLw7onLRnrq0/IzW7yWR7QkrmBL7jTKEn5u"

PLANTED: tuple[Planted, ...] = (
    # e-mail
    Planted("email", "jane.doe@example.com", "Please send the invoice to jane.doe@example.com before Friday."),
    Planted("email", "ops+alerts@mail.acme-corp.co.uk", 'tool args: {"to": "ops+alerts@mail.acme-corp.co.uk", "cc": []}'),
    Planted("email", "J.Smith@Contoso.COM", "| contact | [J.Smith@Contoso.COM](mailto:J.Smith@Contoso.COM) |"),
    Planted("email", "bob_99@gmail.com", "Customer (bob_99@gmail.com) says the refund never arrived."),
    Planted("email", "support-team@helpdesk.io", "Reply-To: support-team@helpdesk.io\nSubject: ticket"),
    # phone numbers, national and international formats
    Planted("phone", "+1 415 555 2671", "You can reach me on +1 415 555 2671 after 5pm."),
    Planted("phone", "(415) 555-2671", "my cell is (415) 555-2671, text first"),
    Planted("phone", "415.555.2671", "Phone: 415.555.2671"),
    Planted("phone", "+1-202-555-0143", '{"customer": {"phone": "+1-202-555-0143"}}'),
    Planted("phone", "+44 20 7946 0958", "Our London office: +44 20 7946 0958."),
    Planted("phone", "020 7946 0958", "call the UK desk on 020 7946 0958 please"),
    Planted("phone", "07911 123456", "mobile 07911 123456 (UK)"),
    Planted("phone", "+49 30 901820", "Berlin: +49 30 901820"),
    Planted("phone", "+33 1 42 68 53 00", "- Paris hotline: +33 1 42 68 53 00"),
    Planted("phone", "+91 98765 43210", "WhatsApp +91 98765 43210 anytime"),
    Planted("phone", "+61 2 9374 4000", "Sydney support +61 2 9374 4000"),
    # payment cards (documented test numbers)
    Planted("card", "4111 1111 1111 1111", "card number 4111 1111 1111 1111 exp 12/27"),
    Planted("card", "5555-5555-5555-4444", "Charge 5555-5555-5555-4444 for $49.00"),
    Planted("card", "378282246310005", 'payment_method: {"number": "378282246310005", "brand": "amex"}'),
    Planted("card", "6011 1111 1111 1117", "Discover: 6011 1111 1111 1117."),
    Planted("card", "4012888888881881", "I paid with 4012888888881881 yesterday"),
    Planted("card", "2223 0031 2200 3222", "new Mastercard 2223 0031 2200 3222 12/26 please update"),
    # IBANs
    Planted("iban", "GB82 WEST 1234 5698 7654 32", "Wire it to GB82 WEST 1234 5698 7654 32 (Westminster)."),
    Planted("iban", "DE89370400440532013000", "IBAN: DE89370400440532013000"),
    # secrets: provider keys and tokens
    Planted("secret", "AKIAIOSFODNN7EXAMPLE", "export AWS_ACCESS_KEY_ID=AKIAIOSFODNN7EXAMPLE"),
    Planted("secret", "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
            'aws_secret_access_key = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"'),  # fmt: skip
    Planted("secret", "ghp_1a2B3c4D5e6F7g8H9i0JkLmNoPqRsTuVwXyZ",
            "git clone https://ghp_1a2B3c4D5e6F7g8H9i0JkLmNoPqRsTuVwXyZ@github.com/acme/app.git"),  # fmt: skip
    Planted("secret", "sk-proj-Xa9Bv3Kq7Lm2Np5Rs8Tu1Wx4Yz6Ab0Cd3Ef5Gh7Ij9Kl",
            "OPENAI_API_KEY=sk-proj-Xa9Bv3Kq7Lm2Np5Rs8Tu1Wx4Yz6Ab0Cd3Ef5Gh7Ij9Kl"),  # fmt: skip
    Planted("secret", "sk-ant-api03-Qw3Er5Ty7Ui9Op1As3Df5Gh7Jk9Lz2Xc4Vb6Nm8Qw0Er2Ty4Ui6Op8As0Df2Gh4",
            "use key sk-ant-api03-Qw3Er5Ty7Ui9Op1As3Df5Gh7Jk9Lz2Xc4Vb6Nm8Qw0Er2Ty4Ui6Op8As0Df2Gh4 for claude"),  # fmt: skip
    Planted("secret", "xoxb-2048-4096-Ab12Cd34Ef56Gh78Ij90Kl12",
            "```\nSLACK_BOT_TOKEN: xoxb-2048-4096-Ab12Cd34Ef56Gh78Ij90Kl12\n```"),  # fmt: skip
    Planted("secret", "sk_live_4eC39HqLyjWDarjtT1zdp7dc", 'stripe.api_key = "sk_live_4eC39HqLyjWDarjtT1zdp7dc"'),
    Planted("secret", "AIzaSyDaGmWKa4JsXZ-HjGw7ISLn_3namBGewQe", "maps key AIzaSyDaGmWKa4JsXZ-HjGw7ISLn_3namBGewQe in the html"),
    Planted("secret", "glpat-xY7zK2mN9pQ4rT6vW8aB", "GITLAB_TOKEN glpat-xY7zK2mN9pQ4rT6vW8aB expired"),
    Planted("secret", "hf_AbCdEfGhIjKlMnOpQrStUvWxYz0123456789", "huggingface-cli login --token hf_AbCdEfGhIjKlMnOpQrStUvWxYz0123456789"),
    Planted("secret", _JWT, f"the session JWT was {_JWT} and it expired"),
    Planted("secret", "c2VjcmV0LWJlYXJlci10b2tlbi12YWx1ZS0xMjM0NQ",
            'curl -H "Authorization: Bearer c2VjcmV0LWJlYXJlci10b2tlbi12YWx1ZS0xMjM0NQ" https://api.example.com/v1'),  # fmt: skip
    Planted("secret", _PEM_BODY,
            f"-----BEGIN RSA PRIVATE KEY-----\n{_PEM_BODY}\n-----END RSA PRIVATE KEY-----"),  # fmt: skip
    Planted("secret", "Tr0ub4dor&3", "DB_PASSWORD=Tr0ub4dor&3\nDB_HOST=localhost"),
    Planted("secret", "s3cr3t-P@ss", "postgres://admin:s3cr3t-P@ss@db.internal:5432/prod"),
    Planted("email", "jane.doe@example.com", "sftp://jane.doe@example.com@files.acme.com/upload"),
    Planted("secret", "Fr33-Upl0ad", "sftp://jane.doe@example.com:Fr33-Upl0ad@files.acme.com/upload"),
    Planted("secret", "p4ssw0rd", "REDIS_URL=redis://:p4ssw0rd@cache:6379/0"),
    Planted("secret", "Summer2024!", "Sure, my password is Summer2024! can you log in for me?"),
    Planted("secret", "hunter2", '{"username": "alice", "password": "hunter2"}'),
    Planted("secret", "9fK2mQ7xLp3Rt8ZvW4nB6yHc", "session cookie: 9fK2mQ7xLp3Rt8ZvW4nB6yHc (copied from devtools)"),
    Planted("secret", "a1b2c3d4e5f6a7b8c9d0e1f2a3b4c5d6", "api_key: a1b2c3d4e5f6a7b8c9d0e1f2a3b4c5d6"),
    Planted("secret", "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",
            "SENDGRID=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"),  # fmt: skip
    Planted("secret", "4821", "pin: 4821"),
    # Written after the rules above were tuned, as a held-out check: first run found 27 of these 28
    # ("password Pa55w0rd!2024", a keyword without "is" or ":", was missed, and is now found).
    Planted("email", "maria.garcia_1987@outlook.es", "Hola, soy maria.garcia_1987@outlook.es y necesito ayuda"),
    Planted("email", "first.last@sub.dept.university.edu", "<a href=\"mailto:first.last@sub.dept.university.edu\">mail</a>"),
    Planted("email", "x@y.io", "contact: x@y.io"),
    Planted("phone", "(650) 253-0000", "Call (650) 253-0000 ext. 12"),
    Planted("phone", "+353 1 234 5678", "Dublin office +353 1 234 5678"),
    Planted("phone", "650-253-0000", "phone=650-253-0000"),
    Planted("phone", "+1 (312) 555-0198", "- Chicago: +1 (312) 555-0198"),
    Planted("phone", "+34 612 34 56 78", "mi móvil es +34 612 34 56 78"),
    Planted("phone", "0161 496 0000", "ring 0161 496 0000 (Manchester)"),
    Planted("phone", "+14155552671", '{"to":"+14155552671"}'),
    Planted("card", "4242424242424242", "stripe test card 4242424242424242 cvc 123"),
    Planted("card", "5200 8282 8282 8210", "debit 5200 8282 8282 8210"),
    Planted("card", "3714-496353-98431", "amex 3714-496353-98431 exp 09/28"),
    Planted("iban", "FR14 2004 1010 0505 0001 3M02 606", "IBAN FR14 2004 1010 0505 0001 3M02 606 please"),
    Planted("iban", "NL91ABNA0417164300", "rekening NL91ABNA0417164300"),
    Planted("secret", "AKIAJ7Q2ZKXW5RSTUVWX", "aws_access_key_id=AKIAJ7Q2ZKXW5RSTUVWX"),
    Planted("secret", "ghs_16C7e42F292c6912E7710c838347Ae178B4a", "GITHUB_TOKEN: ghs_16C7e42F292c6912E7710c838347Ae178B4a"),
    Planted("secret", "xoxp-123456789012-123456789012-123456789012-abcdefabcdefabcdefabcdefabcdefab", "slack xoxp-123456789012-123456789012-123456789012-abcdefabcdefabcdefabcdefabcdefab"),
    Planted("secret", "Pa55w0rd!2024", "login with user admin / password Pa55w0rd!2024"),
    Planted("secret", "qwerty123", "The new password: qwerty123"),
    Planted("secret", "mysql://root:r00tPass@10.0.0.5/app", "DATABASE_URL=mysql://root:r00tPass@10.0.0.5/app"),
    Planted("secret", "r00tPass", "conn mysql://root:r00tPass@10.0.0.5/app"),
    Planted("secret", "dGhpcyBpcyBhIHZlcnkgc2VjcmV0IGtleSAxMjM0NTY3", "X-Api-Key: dGhpcyBpcyBhIHZlcnkgc2VjcmV0IGtleSAxMjM0NTY3"),
    Planted("secret", "8Hq3nK2pX9vL5mR7tW1zY4bC6dF0gJ", "here is the code 8Hq3nK2pX9vL5mR7tW1zY4bC6dF0gJ you asked for"),
    Planted("secret", "sk-ant-admin01-AbCdEf0123456789GhIjKl0123456789MnOp", "ANTHROPIC_KEY='sk-ant-admin01-AbCdEf0123456789GhIjKl0123456789MnOp'"),
    Planted("secret", "eyJraWQiOiJhYmMiLCJhbGciOiJSUzI1NiJ9.eyJpc3MiOiJodHRwczovL2F1dGguZXhhbXBsZS5jb20iLCJzdWIiOiI0MiJ9.c2lnbmF0dXJlLWJ5dGVzLWhlcmU", "id_token eyJraWQiOiJhYmMiLCJhbGciOiJSUzI1NiJ9.eyJpc3MiOiJodHRwczovL2F1dGguZXhhbXBsZS5jb20iLCJzdWIiOiI0MiJ9.c2lnbmF0dXJlLWJ5dGVzLWhlcmU"),
    Planted("secret", "MIIEvQIBADANBgkqhkiG9w0BAQEFAASC", "-----BEGIN PRIVATE KEY-----\nMIIEvQIBADANBgkqhkiG9w0BAQEFAASC\n-----END PRIVATE KEY-----"),
    Planted("secret", "npm_a1B2c3D4e5F6g7H8i9J0k1L2m3N4o5P6q7R8", "//registry.npmjs.org/:_authToken=npm_a1B2c3D4e5F6g7H8i9J0k1L2m3N4o5P6q7R8"),
)

LOOKALIKES: tuple[str, ...] = (
    "Order A-10023 shipped on 2024-03-15 and arrives Friday.",
    "The event was logged at 2024-03-15T10:30:00Z (UTC).",
    "The total is $1,299.00 including VAT of €208.33.",
    "Upgrade to version 2.14.1 or python 3.11.4 first.",
    "SKU WID-4471-BLU is out of stock; try WID-4471-RED.",
    "Ticket #48213 was merged into #48190.",
    "request id 123e4567-e89b-12d3-a456-426614174000 failed",
    "fixed in commit 9fceb02d0ae598e95dc970b74767f19372d61af8",
    "sha256 e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
    "UPS tracking 1Z999AA10123456784 shows it in transit.",
    "barcode EAN 4006381333931 on the box",
    "ISBN 978-0-306-40615-7 is the second edition.",
    "Invoice INV-2024-000123 is due on 15.03.2024.",
    "The meeting runs 10:30-11:45 in room 1204.",
    "We have 1,000,000 users and a 45.5% open rate.",
    "Set temperature to 0.7 and max_tokens: 256.",
    "The password is required and must be 12 characters long.",
    "Reset your password at https://example.com/account/reset?step=2",
    "The model has a token limit of 4096 tokens.",
    "Call getUserAccountSettingsByIdV2 from the client.",
    "Error ERR_CONNECTION_REFUSED from localhost:8080",
    "Installed to /usr/local/lib/python3.11/site-packages/torch/lib",
    "See https://docs.example.com/api/v2/orders?page=2&sort=desc for paging.",
    "Case 00012345 escalated to tier 2; zip 94107.",
    "Coordinates 37.7749, -122.4194 are San Francisco.",
    "Mention @support-team or write to user@localhost in dev.",
    "Adapter refunds@v3 is live for agent helpdesk.",
    "base model SmolLM2-135M-Instruct with rank 8",
    "Order number 100045623 was refunded.",
    "The PIN-protected door code changes monthly.",
    "It weighs 2.5 kg and measures 30 x 20 x 15 cm.",
    "Quarter Q3-2024 revenue grew 12% to 4.2M.",
    "Use the pass: mountain route in winter.",
    "Page 12 of 300, section 4.2.1, figure 7b.",
    "Build 20240315.3 passed 1532 of 1540 tests.",
    "Deploy SmolLM2135MInstructModel and watch PaymentGatewayTimeout2024Q3Report.",
    "Compare iPhone15ProMaxTitanium, GalaxyS24UltraTitaniumGray and RTX4090FoundersEditionGPU.",
    # Held out like the planted items above: none of these 25 was touched on the first run.
    "Meeting on March 5, 2024 at 14:30; call-in code 123 456 789.",
    "Price: €1.299,00 (incl. 19% MwSt.)",
    "Serial number SN-2024-0042-XYZ",
    "Tested on Ubuntu 22.04.3 LTS with kernel 6.5.0-14-generic.",
    "The file is at C:\\Users\\Public\\Documents\\report_2024_Q1.xlsx",
    "Order ORD-20240315-8891 was split into two shipments.",
    "Docker image ghcr.io/acme/helpdesk:1.4.2@sha256:abc123def456",
    "Your confirmation number is 7XK92P.",
    "We changed the password policy last year.",
    "A token is a unit of text for the model.",
    "HTTP 404 at /api/v1/users/42/orders",
    "Call us toll-free at one eight hundred flowers.",
    "Run pip install torch==2.13.0 then restart.",
    "Latitude/longitude: 48.8566 N, 2.3522 E",
    "The secret to good support is listening.",
    "Part no. 0123-4567-89 fits models 2019-2023.",
    "Total: 3 items, 1,240.50 USD, tax 99.24 USD.",
    "Employee ID E-004512 in department 17.",
    "Set retry_count=3 and timeout=30s in config.yaml.",
    "Key takeaways: be kind, be fast, be accurate.",
    "Ticket INC0012345 resolved in 2h 14m.",
    "Reference: RFC 5322 section 3.4.1.",
    "batch_size=64, lr=3e-4, warmup=500 steps",
    "Version string v1.2.3-rc.4+build.5678",
    "Backup runs nightly at 02:00 UTC (cron 0 2 * * *).",
)
