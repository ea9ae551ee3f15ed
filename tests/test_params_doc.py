"""docs/parameters.md's reference is what the generator prints from the schema, and names every key."""
from conftest import REPO
from fairprune import params_doc
from fairprune.config import Params


def test_the_parameter_reference_is_current():
    page = (REPO / "docs" / "parameters.md").read_text()
    generated = page.split(params_doc.START, 1)[1].split(params_doc.END, 1)[0]
    assert generated == params_doc.reference(REPO / "params.yaml"), "docs/parameters.md is stale: run `make docs`"


def test_every_key_has_a_type_and_a_meaning():
    rows, _ = params_doc.documented_rows(REPO / "params.yaml")
    keys = {key for key, *_ in rows}
    assert {"data.group", "prune.bifp.lambda_w", "tune.search", "prune.fairgrape.keep_per_round"} <= keys
    assert all(name in keys for name in Params.model_fields)
    missing = [key for key, kind, _, _, meaning in rows if not meaning]
    assert not missing, f"keys without a meaning (comment the field in config.py or add it to params_doc.MEANINGS): {missing}"
    assert ("model.arch", "one of `small_cnn`, `resnet10`, `resnet18`, `mobilenet_v2`") in {r[:2] for r in rows}
