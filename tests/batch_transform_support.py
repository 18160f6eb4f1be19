"""SageMaker Batch Transform's data path, run against a real ``churnkit serve`` in batch mode.

moto records transform jobs but runs no container, so this drives the container the way the service
does (https://docs.aws.amazon.com/sagemaker/latest/dg/batch-transform.html,
https://docs.aws.amazon.com/sagemaker/latest/dg/your-algorithms-batch-code.html,
https://docs.aws.amazon.com/sagemaker/latest/dg/batch-transform-data-processing.html):

1. ``GET /execution-parameters`` fills MaxPayloadInMB / MaxConcurrentTransforms the job left unset;
2. each input object under the S3 prefix is split by line (``SplitType: Line``), ``InputFilter`` applied,
   and lines packed into MultiRecord bodies of at most MaxPayloadInMB, posted with the job's
   ContentType and Accept, at most MaxConcurrentTransforms at once;
3. every answer must have one line per input line; ``JoinSource: Input`` appends the answer to its
   input line (CSV) or adds it under ``SageMakerOutput`` (JSON); ``OutputFilter`` keeps a part;
4. the lines are written to ``<S3OutputPath>/<input file name>.out`` (``AssembleWith: Line``).

Only the JSONPath forms the kit sends are understood: ``$``, ``$[a:]``, ``$[i,j]`` and ``$['k1','k2']``.
"""

from __future__ import annotations

import csv
import io
import json
import re
from concurrent.futures import ThreadPoolExecutor

import httpx


def _select(path: str, value):
    if path == "$":
        return value
    m = re.fullmatch(r"\$\[(-?\d*):\]", path)
    if m:
        return value[int(m.group(1) or 0):]
    m = re.fullmatch(r"\$\[(-?\d+(?:,-?\d+)*)\]", path)
    if m:
        return [value[int(i)] for i in m.group(1).split(",")]
    m = re.fullmatch(r"\$\[('[^']*'(?:,'[^']*')*)\]", path)
    if m:
        keys = re.findall(r"'([^']*)'", m.group(1))
        return {k: value[k] for k in keys if k in value}
    raise ValueError(f"JSONPath {path!r} is not one the kit sends")


def _csv_line(fields) -> bytes:
    buf = io.StringIO()
    csv.writer(buf, lineterminator="").writerow(fields)
    return buf.getvalue().encode()


def _fields(line: bytes) -> list:
    return next(csv.reader(io.StringIO(line.decode(), newline="")))


def run_transform(server_url: str, job: dict, s3) -> dict:
    """Run ``job`` (a CreateTransformJob request) against the server; returns counts and the parameters used."""
    params = httpx.get(server_url + "/execution-parameters", timeout=10).json()
    payload_mb = job.get("MaxPayloadInMB") or params["MaxPayloadInMB"]
    concurrent = job.get("MaxConcurrentTransforms") or params["MaxConcurrentTransforms"]
    dp = job.get("DataProcessing", {})
    content_type = job["TransformInput"]["ContentType"]
    accept = job["TransformOutput"]["Accept"]
    is_csv = content_type == "text/csv"
    src = job["TransformInput"]["DataSource"]["S3DataSource"]["S3Uri"][5:]
    in_bucket, _, in_prefix = src.partition("/")
    out_bucket, _, out_prefix = job["TransformOutput"]["S3OutputPath"][5:].partition("/")
    limit = payload_mb * 1024 * 1024
    counts = {"lines": 0, "requests": 0, "payload_mb": payload_mb, "concurrent": concurrent}
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=in_bucket, Prefix=in_prefix).get("Contents", [])]
    with httpx.Client(base_url=server_url, timeout=60) as client, ThreadPoolExecutor(concurrent) as pool:
        for key in keys:
            lines = [ln for ln in s3.get_object(Bucket=in_bucket, Key=key)["Body"].read().split(b"\n") if ln]
            parsed = [_fields(ln) if is_csv else json.loads(ln) for ln in lines]
            sent = [_csv_line(_select(dp.get("InputFilter", "$"), p)) if is_csv
                    else json.dumps(_select(dp.get("InputFilter", "$"), p)).encode() for p in parsed]
            batches, cur, size = [], [], 0
            for i, line in enumerate(sent):
                if cur and size + len(line) + 1 > limit:
                    batches.append(cur)
                    cur, size = [], 0
                cur.append(i)
                size += len(line) + 1
            if cur:
                batches.append(cur)

            def post(idx, sent=sent):
                body = b"".join(sent[i] + b"\n" for i in idx)
                assert len(body) <= limit
                resp = client.post("/invocations", content=body, headers={"content-type": content_type, "accept": accept})
                assert resp.status_code == 200, resp.text
                answers = resp.text.split("\n")
                if answers and answers[-1] == "":
                    answers.pop()
                assert len(answers) == len(idx), (len(answers), len(idx))
                return answers

            out = []
            for idx, answers in zip(batches, pool.map(post, batches)):
                counts["requests"] += 1
                for i, answer in zip(idx, answers):
                    if is_csv:
                        joined = parsed[i] + _fields(answer.encode()) if dp.get("JoinSource") == "Input" else _fields(answer.encode())
                        out.append(_csv_line(_select(dp.get("OutputFilter", "$"), joined)))
                    else:
                        joined = {**parsed[i], "SageMakerOutput": json.loads(answer)}
                        out.append(json.dumps(_select(dp.get("OutputFilter", "$"), joined)).encode())
            counts["lines"] += len(lines)
            name = key.rsplit("/", 1)[-1]
            s3.put_object(Bucket=out_bucket, Key=out_prefix.rstrip("/") + f"/{name}.out", Body=b"\n".join(out) + b"\n")
    return counts
