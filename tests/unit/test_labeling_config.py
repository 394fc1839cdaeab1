"""The labeling config check behind /setup and the names /predict answers with."""

from __future__ import annotations

import pytest

from kernel.errors import BadInputError
from serving.labeling_config import check_classes, parse_label_config

DIGITS = [str(d) for d in range(10)]


def config(choices, image='<Image name="img" value="$picture"/>', to_name="img") -> str:
    options = "".join(f'<Choice value="{c}"/>' for c in choices)
    return f'<View>{image}<Choices name="digit" toName="{to_name}">{options}</Choices></View>'


def test_names_and_data_key_come_from_the_config():
    target = parse_label_config(config(DIGITS))
    assert (target.from_name, target.to_name, target.data_key) == ("digit", "img", "picture")
    assert target.choices == tuple(DIGITS)
    check_classes(target, DIGITS)  # exact match: no error


@pytest.mark.parametrize(("text", "reason"), [
    ("", "empty"),
    ("<View><Image", "not valid XML"),
    ('<View><Text name="t" value="$text"/></View>', "no <Image>"),
    (config(DIGITS, to_name="other"), "no <Choices> with toName"),
    (config(DIGITS, image='<Image name="img" value="picture"/>'), 'value="$'),
])
def test_configs_the_backend_cannot_serve_say_why(text, reason):
    with pytest.raises(BadInputError, match=None) as info:
        parse_label_config(text)
    assert reason in str(info.value)
    assert info.value.http_status == 422  # a Label Studio request that parses but cannot be served


def test_class_mismatch_names_both_sides():
    target = parse_label_config(config(["0", "1", "cat"]))
    with pytest.raises(BadInputError) as info:
        check_classes(target, ["0", "1", "2"])
    assert "['2'] which the config lacks" in str(info.value)
    assert "['cat'] which the model never predicts" in str(info.value)
