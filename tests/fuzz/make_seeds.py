#!/usr/bin/python3
"""Writes the seed corpus of the fuzz targets (tests/fuzz/corpus/):
jobspec/ gets the example and bad job files, request/ one payload per method
of traind.v1.Trainer and grpc.health.v1.Health, prefixed with the byte that
selects the method in fuzz_request.c (methods in declaration order, Trainer
first). Run from anywhere: tests/fuzz/make_seeds.py"""
import glob
import hashlib
import os
import shutil
import sys

here = os.path.dirname(os.path.abspath(__file__))
src = os.path.dirname(os.path.dirname(here))
sys.path.insert(0, os.path.join(src, "tests", "e2e"))
from traind_harness import Stubs  # noqa: E402

import yaml  # noqa: E402
from google.protobuf import json_format  # noqa: E402


def put(kind, data):
    d = os.path.join(here, "corpus", kind)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, hashlib.sha1(data).hexdigest()), "wb") as f:
        f.write(data)


def main():
    jobs = sorted(glob.glob(os.path.join(src, "config", "jobs", "*.yaml")))
    for p in jobs + sorted(glob.glob(os.path.join(src, "tests", "bad_jobs", "*.*"))):
        if p.endswith(".expect"):
            continue
        with open(p, "rb") as f:
            data = f.read()
        if len(data) <= 64 << 10:
            put("jobspec", data)

    st = Stubs(src)
    pb, health = st.pb, st.health
    specs = []
    for p in jobs:
        with open(p) as f:
            specs.append(json_format.ParseDict(yaml.safe_load(f), st.job.JobSpec()))
    reqs = {
        "SubmitJob": [pb.SubmitJobRequest(spec=s, name="seed") for s in specs],
        "GetJob": [pb.GetJobRequest(id="j-20261201-000001")],
        "ListJobs": [pb.ListJobsRequest(states=[1, 2], page_size=10, page_token="abc")],
        "CancelJob": [pb.CancelJobRequest(id="j-20261201-000001")],
        "GetMetrics": [pb.GetMetricsRequest(id="j-1", since_step=5, max_points=100)],
        "WatchMetrics": [pb.WatchMetricsRequest(id="j-1", since_step=-1)],
        "ListDevices": [pb.ListDevicesRequest()],
        "GetDaemonInfo": [pb.GetDaemonInfoRequest()],
        "SaveCheckpoint": [pb.SaveCheckpointRequest(id="j-1")],
        "ExportCheckpoint": [pb.ExportCheckpointRequest(id="j-1", step=3)],
        "Sample": [pb.SampleRequest(id="j-1", prompt="ROMEO:", tokens=5, top_k=3)],
        "GetExamples": [pb.GetExamplesRequest(id="j-1", top=5, with_inputs=True)],
        "Check": [health.HealthCheckRequest(service="traind.v1.Trainer")],
        "Watch": [health.HealthCheckRequest(service="")],
    }
    methods = list(pb.DESCRIPTOR.services_by_name["Trainer"].methods)
    methods += list(health.DESCRIPTOR.services_by_name["Health"].methods)
    for i, m in enumerate(methods):
        for r in reqs[m.name]:
            put("request", bytes([i]) + r.SerializeToString())


if __name__ == "__main__":
    shutil.rmtree(os.path.join(here, "corpus"), ignore_errors=True)
    main()
