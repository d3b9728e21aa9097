"""`python -m runevents.events` writes the published JSON Schema file (`make schema`)."""

from runevents.events.envelope import SCHEMA_FILE, envelope_json_schema_text


def main() -> None:
    """Write the envelope models' JSON Schema to `SCHEMA_FILE`."""
    SCHEMA_FILE.write_text(envelope_json_schema_text(), encoding="utf-8")
    print(f"wrote {SCHEMA_FILE}")


if __name__ == "__main__":
    main()
