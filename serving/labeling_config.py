"""What the service needs from a Label Studio labeling config, and whether it fits the model.

The backend answers for one `<Choices>` over one `<Image>`: the result names (`from_name`,
`to_name`) and the task-data key of the image come from the project's own config, so a
project may call them anything. Parsed with the standard library: serving must not depend
on the Label Studio SDK.
"""

from __future__ import annotations

import functools
import xml.etree.ElementTree as ET
from dataclasses import dataclass

from serving.protocol import UnprocessableError

__all__ = ["ChoiceTarget", "parse_label_config", "check_classes"]


@dataclass(frozen=True)
class ChoiceTarget:
    from_name: str  # the <Choices name=...>
    to_name: str  # the <Image name=...> it labels
    data_key: str  # task.data key holding the image URL ($image -> "image")
    choices: tuple[str, ...]


@functools.lru_cache(maxsize=64)
def parse_label_config(config: str) -> ChoiceTarget:
    """The first `<Choices>` whose `toName` is an `<Image>`; `UnprocessableError` (a
    `BadInputError`, 422 at the service's edge) says what is missing."""
    if not config.strip():
        raise UnprocessableError("the labeling config is empty")
    try:
        root = ET.fromstring(config)
    except ET.ParseError as exc:
        raise UnprocessableError(f"the labeling config is not valid XML: {exc}") from exc
    images = {el.get("name"): el.get("value", "") for el in root.iter("Image") if el.get("name")}
    if not images:
        raise UnprocessableError("the labeling config has no <Image> tag: this backend classifies images")
    for el in root.iter("Choices"):
        to_name = el.get("toName", "")
        if to_name in images and el.get("name"):
            value = images[to_name]
            if not value.startswith("$") or len(value) < 2:
                raise UnprocessableError(f'<Image name="{to_name}"> needs value="$<task data key>", got {value!r}')
            choices = tuple(c.get("value", "") for c in el.iter("Choice"))
            return ChoiceTarget(el.get("name", ""), to_name, value[1:], choices)
    raise UnprocessableError(
        "the labeling config has no <Choices> with toName pointing at an <Image> "
        f"(images: {', '.join(sorted(images))})"
    )


def check_classes(target: ChoiceTarget, model_classes: list[str]) -> None:
    """The config's choices must be exactly the classes the model predicts."""
    config_set, model_set = set(target.choices), set(model_classes)
    if config_set == model_set:
        return
    parts = []
    if missing := sorted(model_set - config_set):
        parts.append(f"the model predicts {missing} which the config lacks")
    if extra := sorted(config_set - model_set):
        parts.append(f"the config offers {extra} which the model never predicts")
    raise UnprocessableError(
        f'<Choices name="{target.from_name}"> does not match the model\'s classes: ' + "; ".join(parts)
    )
