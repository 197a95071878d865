"""docs/asyncapi.yaml describes the live-events topic: every published event type is a
message on it, with its `data` schema taken from docs/events/<type>.json."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import msgspec
import yaml

from adapters.relay.relay import PREVIOUS_HEADER

DOCS = Path(__file__).resolve().parents[2] / "docs"
EXTENSIONS = ("tenantid", "userid", "position", "aggregatetype", "aggregateversion")


def load() -> dict[str, Any]:
    document: dict[str, Any] = yaml.safe_load((DOCS / "asyncapi.yaml").read_text())
    return document


def resolve(document: dict[str, Any], ref: str) -> Any:
    node: Any = document
    for part in ref.removeprefix("#/").split("/"):
        node = node[part]
    return node


def test_the_topic_and_its_envelope() -> None:
    doc = load()
    assert str(doc["asyncapi"]).startswith("3.")
    [channel] = doc["channels"].values()
    assert channel["address"] == "xentree.live.events"
    [trait] = doc["components"]["messageTraits"].values()
    assert trait["headers"]["properties"]["content-type"]["const"] == (
        "application/cloudevents+json"
    )
    assert set(trait["headers"]["required"]) == {"content-type", PREVIOUS_HEADER}
    assert "aggregate id" in trait["bindings"]["kafka"]["key"]["description"]
    envelope = doc["components"]["schemas"]["CloudEventEnvelope"]["properties"]
    for extension in EXTENSIONS:
        assert "CloudEvents extension" in envelope[extension]["description"], extension
    [operation] = doc["operations"].values()
    assert resolve(doc, operation["channel"]["$ref"]) is channel
    assert len(operation["messages"]) == len(channel["messages"])


def test_every_event_type_has_a_message_referencing_its_schema() -> None:
    doc = load()
    [channel] = doc["channels"].values()
    messages = {
        (m := resolve(doc, ref["$ref"]))["name"]: m for ref in channel["messages"].values()
    }
    published = {p.name.removesuffix(".json"): p for p in (DOCS / "events").glob("*.json")}
    missing = sorted(set(published) - set(messages))
    assert not missing, f"add these event types to docs/asyncapi.yaml: {missing}"
    assert set(messages) == set(published), "docs/asyncapi.yaml names unknown event types"
    for event_type, message in messages.items():
        schema = msgspec.json.decode(published[event_type].read_bytes())
        envelope_ref, own = message["payload"]["allOf"]
        assert envelope_ref == {"$ref": "#/components/schemas/CloudEventEnvelope"}
        assert own["properties"]["type"] == {"const": event_type}
        file, _, pointer = own["properties"]["data"]["$ref"].partition("#")
        assert file == f"./events/{event_type}.json"
        assert "#" + pointer == schema["properties"]["data"]["$ref"], event_type
        assert resolve(schema, "#" + pointer)["type"] == "object"
        assert message["x-class-version"] == schema["x-class-version"], event_type
        assert message["traits"] == [{"$ref": "#/components/messageTraits/CloudEventOnKafka"}]
