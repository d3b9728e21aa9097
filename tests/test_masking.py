"""The one function every message goes through: each place a URL or a DSN can carry a secret is masked."""

from __future__ import annotations

from urllib.parse import quote

import pytest

from runevents.masking import MASK, error_line, mask_secrets

SECRET = "s3cr3t-Pa55"
DATABASE = f"postgresql://carol:{SECRET}@db.internal:5432/events"


@pytest.mark.parametrize(
    "text",
    [
        DATABASE,
        f"postgresql+asyncpg://carol:{SECRET}@db/events?sslmode=require",
        f"postgresql://carol@db/events?password={SECRET}",
        f"postgresql://carol@db/events?sslmode=verify-full&sslpassword={SECRET}&x=1",
        f"postgresql://carol@db/events?PASSWORD={SECRET}",
        f"host=db user=carol password={SECRET} dbname=events",
        f"kafka://broker:9092?database={quote(DATABASE, safe='')}",
        f"kafka://broker:9092?database={quote(f'postgresql://carol@db/events?password={SECRET}', safe='')}",
        f"sasl_password={SECRET}",
        f"could not connect to {DATABASE}: timeout",
    ],
    ids=[
        "userinfo",
        "userinfo-driver",
        "password-query",
        "sslpassword-query",
        "upper-case-key",
        "libpq-key-value",
        "kafka-encoded-userinfo",
        "kafka-encoded-password-query",
        "sasl-password",
        "inside-a-sentence",
    ],
)
def test_every_position_a_url_can_carry_a_secret_is_masked(text: str):
    masked = mask_secrets(text)
    assert SECRET not in masked
    assert quote(SECRET, safe="") not in masked
    assert MASK in masked


def test_what_is_not_a_secret_is_kept():
    url = "postgresql://carol@db.internal:5432/events?sslmode=require&application_name=runevents"
    assert mask_secrets(url) == url


def test_a_secret_named_by_the_caller_is_masked_wherever_it_appears():
    assert mask_secrets(f"token rejected: {SECRET}!", SECRET) == f"token rejected: {MASK}!"


def test_a_value_already_masked_keeps_what_follows_it():
    # A named secret is masked first; the parameter rule must not then eat the ')' after it.
    assert mask_secrets(f"(password={SECRET}) failed", SECRET) == f"(password={MASK}) failed"


def test_error_line_is_one_masked_line_with_addresses_not_tuples():
    error = OSError(f"Connect call failed ('10.0.0.7', 5432) for {DATABASE}\nsecond line")
    line = error_line(error)
    assert (
        line
        == f"OSError: Connect call failed 10.0.0.7:5432 for postgresql://carol:{MASK}@db.internal:5432/events"
    )
    ipv6 = error_line(OSError("Connect call failed ('::1', 9092, 0, 0)"), named=False)
    assert ipv6 == "Connect call failed [::1]:9092"
    kafka = error_line(OSError("Unable connect to ('127.0.0.1', 9092, <AddressFamily.AF_INET: 2>)"))
    assert kafka == "OSError: Unable connect to 127.0.0.1:9092"
