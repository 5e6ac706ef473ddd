"""The client's answer models mirror the reader's documented schemas, and the client needs nothing of the reader."""

from __future__ import annotations

import pytest
from recstream.serving import catalogue, schemas

from recstream.client import wire
from tests.test_layers import MODULES, imported

MIRRORED = ["FeedItem", "FeedPage", "SimilarItem", "SimilarItems", "Preferences", "PreferencesSaved"]
MIRRORED += ["EventsAccepted", "Ready", "Stats"]
CATALOGUE = ["LineRejected", "ItemsAccepted", "UserErased"]  # serving/catalogue.py's answers
LATER = {"score", "top_feature", "ranked", "dropped", "ranker_weights"}
"""Fields readers send since the ranking stage, the click limits and the ranker's weights in /v1/stats: optional in
the client, so it still reads an older reader's answers."""


@pytest.mark.parametrize(("module", "name"), [(schemas, n) for n in MIRRORED] + [(catalogue, n) for n in CATALOGUE])
def test_each_answer_model_has_the_readers_fields(module, name):
    reader, client = getattr(module, name), getattr(wire, name)
    assert list(client.model_fields) == list(reader.model_fields)
    lenient = {name for name, f in client.model_fields.items() if not f.is_required()}
    assert lenient <= {name for name, f in reader.model_fields.items() if not f.is_required()} | LATER, (
        "a field the client may miss is one the reader may omit, or one older readers do not send"
    )


def test_the_client_imports_only_the_contracts_of_the_project():
    client = {name: path for name, path in MODULES.items() if name.startswith("recstream.client")}
    assert len(client) >= 4
    project = {t for path in client.values() for t in imported(path) if t.startswith("recstream.")}
    assert {t.split(".")[1] for t in project} == {"client", "contracts"}
