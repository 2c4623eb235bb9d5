"""The one rule for user text, and the config's size cap, as `wire` checks them."""

from __future__ import annotations

import pydantic
import pytest

from layerwatch import wire

BAD_IN_NAMES = [
    "\x00", "\x1b[31m", "\x7f", "\x85",  # control characters
    "\u202e", "\u2066", "\u200f", "\u061c",  # bidirectional marks and overrides
    "\u200b", "\u200d", "\u2060", "\ufeff",  # zero-width characters
    "\u2028", "\u2029",  # line and paragraph separators
    "\ud800",  # a lone surrogate
    "\n", "\t",
]  # fmt: skip


@pytest.mark.parametrize("bad", BAD_IN_NAMES)
@pytest.mark.parametrize("field", ["project", "name", "tag", "config key", "nested config key"])
def test_names_tags_and_config_keys_share_one_rule(field: str, bad: str) -> None:
    text = f"lr{bad}x"
    payload: dict[str, object] = {"project": "p", "name": "n"}
    if field in {"project", "name"}:
        payload[field] = text
    elif field == "tag":
        payload["tags"] = [text]
    elif field == "config key":
        payload["config"] = {text: 1}
    else:
        payload["config"] = {"optimizer": {text: 1}}
    with pytest.raises(pydantic.ValidationError, match=r"must not contain|unicode string"):
        wire.RunCreate.model_validate(payload)


def test_tensor_names_follow_the_rule() -> None:
    with pytest.raises(pydantic.ValidationError, match="must not contain"):
        wire.TensorInfo(name="fc\u202e1", kind="activation")


@pytest.mark.parametrize("good", ["encoder.layers.3.mlp", "Schichtgröße", "層.3", "naïve café"])
def test_printable_names_pass(good: str) -> None:
    run = wire.RunCreate(project=good, name=good, tags=[good], config={good: {good: good}})
    assert run.config == {good: {good: good}}


def test_config_values_may_hold_lines_and_scripts_but_no_controls() -> None:
    text = "line one\nline\ttwo\r\n👩\u200d💻 \u0627\u0644\u200f"
    assert wire.RunCreate(config={"notes": text}).config == {"notes": text}
    for bad in ["\x00", "\x1b", "\x7f", "\ud800"]:
        with pytest.raises(pydantic.ValidationError, match=r"must not contain|unicode string"):
            wire.RunCreate(config={"notes": f"a{bad}b"})


def test_config_is_capped_in_bytes() -> None:
    wire.RunCreate(config={"blob": "x" * (wire.MAX_CONFIG_BYTES - 20)})
    with pytest.raises(pydantic.ValidationError, match=f"at most {wire.MAX_CONFIG_BYTES} bytes"):
        wire.RunCreate(config={"blob": "x" * wire.MAX_CONFIG_BYTES})
    with pytest.raises(pydantic.ValidationError, match="at most"):  # multi-byte characters count
        wire.RunCreate(config={"blob": "é" * (wire.MAX_CONFIG_BYTES // 2)})


def test_config_keys_are_capped_in_length_at_any_depth() -> None:
    with pytest.raises(pydantic.ValidationError):
        wire.RunCreate(config={"k" * 251: 1})
    with pytest.raises(pydantic.ValidationError, match="at most 250"):
        wire.RunCreate(config={"outer": {"k" * 251: 1}})
