#!/usr/bin/python3
"""Bad conv, pooling and normalization layers over RPC: each SubmitJob is
refused with INVALID_ARGUMENT and a message that names the field or layer
and says what to fix, the daemon keeps serving, and the same layers set
right are accepted and train.

usage: daemon_layer_errors.py TRAIND TRAINCTL SOURCE_DIR [CASE...]

A real traind on a temporary unix socket, driven by Python grpcio (stubs
generated from proto/); the data root holds a synthetic HDF5 set of 784
values per example (read as 28 x 28 x 1 images), so MNIST is not needed.
Messages come from engine/ops.c (the layers' build and shape functions),
engine/plan.c (names, parameter views) and engine/jobspec.c (the size
check before compiling).

  layer_errors     29 specs with a bad conv, max_pool, avg_pool,
                   global_avg_pool, batch_norm or layer_norm (missing and
                   malformed arguments, out-of-range values, layers on
                   inputs they cannot take, windows that do not fit or lie
                   in the padding, outputs and models too large, names too
                   long for their parameters): INVALID_ARGUMENT with the
                   words of its message; after each, a health Check and a
                   GetJob of a known job answer; no job is created
  layers_accepted  the same layers with valid arguments, including the
                   boundaries next to the refused cases (a norm's name of
                   57 characters, avg_pool padding that leaves a value in
                   every window), and a dense layer that names a layer by
                   its generated name (layerN counts conv and norm layers):
                   accepted, and the jobs SUCCEED

Every daemon is stopped with SIGTERM and must exit 0 with no sanitizer
report. Prints one line per case, then "N passed, N failed".
"""
import copy
import os
import sys

import grpc

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import traind_harness as th  # noqa: E402
from traind_harness import check, expect_status, rpc_error  # noqa: E402

args = th.parse_args(__doc__.splitlines()[1])
suite = th.Suite(args)
pb = suite.pb
S = pb.JobState
C = grpc.StatusCode

IMAGE = [28, 28, 1]
FLAT = {"flatten": {}}
HEAD = {"dense": {"features": 10}}


def spec(layers, input_shape=IMAGE):
    """The synthetic job with this model (one epoch of 16 steps)."""
    sp = th.synthetic_spec(suite.source_dir, epochs=1)
    sp["name"] = "layers"
    sp["model"]["input_shape"] = list(input_shape)
    sp["model"]["layers"] = copy.deepcopy(layers)
    return sp


def conv(**kw):
    c = {"features": 4, "kernel_size": [3, 3]}
    c.update(kw)
    return {"conv": c}


class Ctx:
    """A daemon and one job it knows, to check that it keeps serving."""

    def __init__(self, s):
        th.make_synthetic(s.tmp)
        self.s = s
        self.d = s.daemon(data_dirs=[s.tmp])
        self.known = s.submit(self.d, th.synthetic_spec(s.source_dir, epochs=1), name="known")
        s.wait_state(self.d, self.known.id, S.SUCCEEDED, 120)

    def alive(self, after):
        d = self.d
        check(d.alive(), "the daemon exited after %s:\n%s", after, th.tail(d.log()))
        try:
            h = d.health.Check(self.s.stubs.health.HealthCheckRequest(), timeout=5)
            j = d.stub.GetJob(pb.GetJobRequest(id=self.known.id), timeout=5)
        except grpc.RpcError as e:
            raise th.TestFailure("the daemon stopped serving after %s: %s %s"
                                 % (after, e.code().name, e.details()))
        check(h.status == self.s.stubs.health.HealthCheckResponse.SERVING,
              "health is %d after %s", h.status, after)
        check(j.id == self.known.id and j.state == S.SUCCEEDED,
              "GetJob of the known job after %s: %s %s", after, j.id, S.Name(j.state))

    def jobs(self):
        return len(self.d.stub.ListJobs(pb.ListJobsRequest(), timeout=10).jobs)


@suite.case
def layer_errors(s):
    c = Ctx(s)
    long_name = "n" * 58  # "<name>/scale" needs 64 characters: one too many
    cases = [
        # conv: its arguments.
        ("conv without kernel_size",
         spec([{"conv": {"features": 8}}, FLAT, HEAD]),
         "model.layers[0].conv.kernel_size", "required", "[3, 3]"),
        ("kernel_size of 3 values",
         spec([conv(kernel_size=[3, 3, 3]), FLAT, HEAD]),
         "model.layers[0].conv.kernel_size", "3 values",
         "one for both dimensions or two (height, width)"),
        ("features 0",
         spec([conv(features=0), FLAT, HEAD]),
         "model.layers[0].conv.features", "must be in 1..1048576", "got 0"),
        ("a stride of 0",
         spec([conv(strides=[1, 0]), FLAT, HEAD]),
         "model.layers[0].conv.strides", "must be in 1..65536", "got 0"),
        ("a dilation of 0",
         spec([FLAT, {"reshape": {"shape": [28, 28, 1]}}, conv(kernel_dilation=[0]), FLAT,
               HEAD]),
         "model.layers[2].conv.kernel_dilation", "must be in 1..65536", "got 0"),
        ("padding FULL",
         spec([conv(padding="FULL"), FLAT, HEAD]),
         "model.layers[0].conv.padding", "'FULL'", 'use "SAME", "VALID" or explicit_padding'),
        ("padding in lower case",
         spec([conv(padding="same"), FLAT, HEAD]),
         "model.layers[0].conv.padding", "'same'", '"SAME"'),
        ("padding and explicit_padding",
         spec([conv(padding="SAME", explicit_padding=[1, 1]), FLAT, HEAD]),
         "model.layers[0].conv", "set padding or explicit_padding, not both"),
        ("explicit_padding of 3 values",
         spec([conv(explicit_padding=[1, 1, 1]), FLAT, HEAD]),
         "model.layers[0].conv.explicit_padding", "3 values",
         "[low, high] for both dimensions or [top, bottom, left, right]"),
        ("explicit_padding too large",
         spec([conv(explicit_padding=[70000, 1]), FLAT, HEAD]),
         "model.layers[0].conv.explicit_padding[0]", "70000 is too large", "at most 65536"),
        # conv: its input and its output.
        ("conv on a vector",
         spec([conv(), FLAT, HEAD], input_shape=[784]),
         "model.layers[0] ('layer1')", "conv takes images (height, width, channels)",
         "not values of shape (784,)", "give model.input_shape three dimensions"),
        ("conv on a 2-d input",
         spec([{"name": "c", **conv()}, FLAT, HEAD], input_shape=[28, 28]),
         "model.layers[0] ('c')", "conv takes images", "shape (28, 28)"),
        ("a VALID 5x5 window on 3x3",
         spec([{"avg_pool": {"window_shape": [9, 9], "strides": [9, 9]}},
               {"name": "c5", **conv(kernel_size=[5, 5], padding="VALID")}, FLAT, HEAD]),
         "model.layers[1] ('c5')", "the conv window (5 taps) does not fit",
         "height of 3 (padded 0 + 0)", "use a smaller window or more padding"),
        ("a dilated window that does not fit",
         spec([conv(kernel_dilation=[14], padding="VALID"), FLAT, HEAD]),
         "model.layers[0] ('layer1')", "3 taps, dilated", "height of 28"),
        ("a conv output over 2^24 values",
         spec([conv(features=32768), FLAT, HEAD]),
         "model.layers[0] ('layer1')", "its output (28, 28, 32768)",
         "more than 16777216 values per example", "larger strides or fewer features"),
        ("a conv kernel over 2^31 parameters",
         spec([conv(features=1 << 20, kernel_size=[56, 56], padding="VALID"), FLAT, HEAD],
              input_shape=[56, 56, 1]),
         "model: with layer1/w (3288334336 values)", "more than 2^31 parameters",
         "make the layers smaller"),
        ("a dense layer after a conv over 2^31 parameters",
         spec([conv(features=4096), FLAT, {"dense": {"features": 1024}}, HEAD]),
         "model: with layer2/w (3288334336 values)", "more than 2^31 parameters"),
        # max_pool and avg_pool.
        ("max_pool with count_include_pad",
         spec([{"max_pool": {"window_shape": [2, 2], "count_include_pad": False}}, FLAT, HEAD]),
         "model.layers[0].max_pool.count_include_pad", "only avg_pool takes it"),
        ("avg_pool without window_shape",
         spec([{"avg_pool": {"strides": [2, 2]}}, FLAT, HEAD]),
         "model.layers[0].avg_pool.window_shape", "required", "[2, 2]"),
        ("avg_pool strides of 3 values",
         spec([{"avg_pool": {"window_shape": [2], "strides": [1, 2, 3]}}, FLAT, HEAD]),
         "model.layers[0].avg_pool.strides", "3 values"),
        ("max_pool windows in the padding",
         spec([{"max_pool": {"window_shape": [2, 2], "explicit_padding": [2, 2]}}, FLAT, HEAD]),
         "model.layers[0]", "with padding 2 + 2 on the input's height of 28",
         "some max_pool windows (2 taps) lie wholly in the padding",
         "pad each side by less than the window"),
        ("avg_pool windows in the padding, padding not counted",
         spec([{"avg_pool": {"window_shape": [3, 3], "explicit_padding": [0, 1, 1, 3],
                             "count_include_pad": False}}, FLAT, HEAD]),
         "model.layers[0]", "with padding 1 + 3 on the input's width of 28",
         "some avg_pool windows (3 taps)", "count_include_pad"),
        # global_avg_pool.
        ("global_avg_pool on a vector",
         spec([{"global_avg_pool": {}}, HEAD], input_shape=[784]),
         "model.layers[0]", "global_avg_pool takes images (height, width, channels)",
         "(784,)"),
        ("global_avg_pool of two inputs",
         spec([{"name": "a", **conv()}, {"global_avg_pool": {}, "inputs": ["a", "a"]}, HEAD]),
         "model.layers[1]", "global_avg_pool takes 1 input, not 2"),
        # batch_norm and layer_norm.
        ("batch_norm momentum 1.5",
         spec([conv(), {"batch_norm": {"momentum": 1.5}}, FLAT, HEAD]),
         "model.layers[1].batch_norm.momentum", "must be in [0, 1]", "got 1.5"),
        ("batch_norm epsilon 0",
         spec([conv(), {"batch_norm": {"epsilon": 0}}, FLAT, HEAD]),
         "model.layers[1].batch_norm.epsilon", "must be in (0, 1)", "got 0"),
        ("layer_norm epsilon -1",
         spec([FLAT, {"layer_norm": {"epsilon": -1}}, HEAD]),
         "model.layers[1].layer_norm.epsilon", "must be in (0, 1)", "got -1"),
        ("a norm name too long for its parameters",
         spec([conv(), {"name": long_name, "batch_norm": {}}, FLAT, HEAD]),
         "model.layers[1].name", "58 characters are too many",
         "'%s/scale'" % long_name, "a name of at most 57 characters"),
        # Generated names count every layer with parameters.
        ("a name that equals a generated one",
         spec([conv(), FLAT, {"name": "layer1", "dense": {"features": 10}}]),
         "two layers are both named 'layer1'", "model.layers[0] and model.layers[2]"),
    ]
    before = c.jobs()
    for what, sp, *words in cases:
        e = rpc_error(c.d.stub.SubmitJob,
                      pb.SubmitJobRequest(spec=th.spec_msg(s.stubs, sp)), timeout=30,
                      what="SubmitJob of %s" % what)
        try:
            expect_status(e, C.INVALID_ARGUMENT, *words)
        except th.TestFailure as f:
            raise th.TestFailure("%s: %s" % (what, f))
        c.alive(what)
    print("  %d bad layer specs refused" % len(cases))
    check(c.jobs() == before, "refused specs created jobs: %d listed, %d before", c.jobs(),
          before)


@suite.case
def layers_accepted(s):
    c = Ctx(s)
    every_layer = spec([
        {"name": "c1", **conv()},
        {"name": "bn1", "batch_norm": {"momentum": 0.9}},
        {"relu": {}},
        {"max_pool": {"window_shape": [2, 2], "strides": [2, 2]}},
        conv(features=8, kernel_size=[3], strides=[2], padding="VALID"),
        {"name": "n" * 57, "layer_norm": {}},
        # One padded position per side with a 2-tap window: each window
        # still holds a value, so it is not averaged over padding alone.
        {"avg_pool": {"window_shape": [2], "explicit_padding": [1, 1],
                      "count_include_pad": False}},
        {"global_avg_pool": {}},
        HEAD,
    ])
    # layer2 is the dense layer after the conv; a size check that numbered
    # dense layers alone would read layer2 as the 65536-wide layer itself.
    generated = spec([
        conv(features=1, kernel_size=[1]), FLAT,
        {"dense": {"features": 16}},
        {"dense": {"features": 65536}, "inputs": ["layer2"]},
        HEAD,
    ])
    for what, sp in (("every new layer", every_layer), ("generated names", generated)):
        try:
            j = s.submit(c.d, sp, name=what)
        except grpc.RpcError as e:
            raise th.TestFailure("SubmitJob of %s refused: %s %s"
                                 % (what, e.code().name, e.details()))
        r = s.wait_state(c.d, j.id, (S.SUCCEEDED, S.FAILED), 300, "the job of %s" % what)
        check(r.state == S.SUCCEEDED, "the job of %s ended %s: %s", what, S.Name(r.state),
              r.error)
        c.alive(what)


if __name__ == "__main__":
    sys.exit(suite.run())
