"""What the clouds document, as the tests' fakes enforce it: the fixtures' sources, Azure Monitor's metric
catalog (a fake metrics service answers only documented names and aggregations, as Azure Monitor does), and
request checks through each cloud's own SDK model.
"""

from __future__ import annotations

import json
from pathlib import Path

FIXTURES = Path(__file__).parent / "fixtures"


def fixture(name: str) -> dict:
    """A JSON fixture of ``tests/fixtures`` (each names its ``source``)."""
    return json.loads((FIXTURES / name).read_text())


def azure_metric_error(resource: str, names: str, aggregation: str) -> dict | None:
    """Azure Monitor's refusal of a metrics query on an online endpoint (``resource`` ending in
    ``/onlineEndpoints/<name>``) or one of its deployments, or None when every metric name is documented
    for that resource. Azure answers an unknown name with 400 BadRequest and fails the whole query."""
    catalog = fixture("azure-monitor-metric-definitions.json")
    kind = "deployments" if "/deployments/" in resource else "onlineEndpoints"
    for name in names.split(","):
        if name not in catalog[kind]:
            return {"error": {"code": "BadRequest", "message": f"Failed to find metric configuration for provider: "
                              f"Microsoft.MachineLearningServices, resource Type: workspaces/{kind}, metric: {name}, "
                              f"Valid metrics: {','.join(catalog[kind])}"}}
    return None


def azure_documented(resource: str, body: dict, names: str, aggregation: str) -> dict:
    """``body`` (a Metrics - List response) cut to the metrics asked for and, in each data point, to the
    aggregations asked for that the metric documents (Azure returns no value for any other)."""
    catalog = fixture("azure-monitor-metric-definitions.json")
    kind = "deployments" if "/deployments/" in resource else "onlineEndpoints"
    asked = {a.strip().lower() for a in aggregation.split(",")}
    out = []
    for metric in body.get("value", []):
        name = metric["name"]["value"]
        if name not in names.split(","):
            continue
        keep = asked & {a.lower() for a in catalog[kind][name]["aggregations"]}
        series = [dict(ts, data=[{k: v for k, v in d.items() if k == "timeStamp" or k in keep} for d in ts["data"]])
                  for ts in metric["timeseries"]]
        out.append(dict(metric, timeseries=series))
    return dict(body, value=out)
