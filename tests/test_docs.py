"""The documentation tells the truth about the design."""

from npu.firmware.docgen import DOC, render


def test_architecture_tables_match_the_isa_and_register_map():
    text = DOC.read_text()
    assert render(text) == text, "run `python -m npu.firmware.docgen` to refresh the tables"
