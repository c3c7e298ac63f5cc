#!/usr/bin/env python3
"""ONNX Runtime as a peer of the StreamRec engine.

Builds the ONNX graph of a StreamRec model spec the way an ONNX Runtime user would write it
(per sparse feature Gather + ReduceSum/ReduceMean over the bag, Gemm + Relu for every linear
layer, Concat, the DLRM dot interaction as a batched MatMul and a Gather of the strict lower
triangle, DCNv2 cross layers as Gemm/Mul/Add, a final Sigmoid), with the same weights, and
runs it on the same inputs.

The folder DIR (written by `cargo xtask bench --peer onnxruntime` and tests/onnx_peer.rs) holds:

  model.json           the validated spec, serialised by the engine (`ModelSpec` as JSON)
  weights.safetensors  every weight tensor, as `Weights::save` writes it (names and layouts:
                       crates/runtime/src/weights.rs; linear weights are [out, in])
  batches.json         a list of batches: {"size": B, "dense": FILE, "features":
                       {NAME: {"indices": FILE, "offsets": FILE}}}; FILEs are raw little-endian
                       f32 (dense, [B, dense]) or i64 (indices [N], offsets [B]) next to it

Modes:

  check DIR [--out FILE]
      runs ORT on every batch and writes {"scores": [[...], ...], "form": [...]} to FILE
      (default DIR/ort-scores.json).
  time DIR [--threads LIST] [--budget-ms MS] [--iters N] [--warmup N]
      times ORT on every batch size in batches.json for each thread setting (default: intra-op
      1 and 2 with sequential execution, and intra-op 1 with 2 inter-op threads in parallel
      execution mode) and prints JSON on stdout: per batch size every setting's p50/p99 latency
      and the best setting by p50.

A batch whose bags all hold the same number of indices per feature runs as the fixed-pooling
graph (indices [B, P]); any other batch (ragged or empty bags) runs as the ragged graph, where
each feature's indices [N] come with their bag number [N] (derived from the offsets before the
run) and the bag sums are a ScatterND with reduction "add" (an EmbeddingBag equivalent).

Exit status: 0 ok; 2 bad arguments or input files; 3 a Python package is missing (one line on
stderr names it); 4 the workload cannot be expressed in ONNX here (one line says why).
"""

import argparse
import json
import os
import sys
import tempfile
import time

EXIT_USAGE = 2
EXIT_MISSING = 3
EXIT_NOT_EXPRESSIBLE = 4

OPSET = 17


class InputError(Exception):
    """A bad input file or argument: exit status 2 with one line."""


class NotExpressible(Exception):
    """The workload has no ONNX form here: exit status 4 with one line."""


def import_packages():
    missing = []
    mods = {}
    for name in ("numpy", "onnx", "onnxruntime", "safetensors"):
        try:
            mods[name] = __import__(name)
        except ImportError:
            missing.append(name)
    if missing:
        print(
            "onnx_peer: missing Python package(s): %s (python3 -m pip install %s)"
            % (", ".join(missing), " ".join(missing)),
            file=sys.stderr,
        )
        sys.exit(EXIT_MISSING)
    return mods


def read_json(path):
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except OSError as e:
        raise InputError("%s: %s" % (path, e.strerror or e))
    except ValueError as e:
        raise InputError("%s: not valid JSON: %s" % (path, e))


class Spec:
    """The parts of the engine's ModelSpec JSON the graph needs, checked."""

    def __init__(self, raw, path):
        def need(obj, key, where):
            if not isinstance(obj, dict) or key not in obj:
                raise InputError("%s: `%s` is missing in %s" % (path, key, where))
            return obj[key]

        self.name = str(need(raw, "name", "the spec"))
        self.dense = int(need(raw, "dense", "the spec"))
        self.bottom = [int(x) for x in need(raw, "bottom", "the spec")]
        self.top = [int(x) for x in need(raw, "top", "the spec")]
        self.features = []
        for i, f in enumerate(need(raw, "features", "the spec")):
            where = "features[%d]" % i
            mode = str(need(f, "mode", where)).lower()
            if mode not in ("sum", "mean"):
                raise InputError("%s: %s.mode is `%s`, expected sum or mean" % (path, where, mode))
            self.features.append(
                {
                    "name": str(need(f, "name", where)),
                    "rows": int(need(f, "rows", where)),
                    "dim": int(need(f, "dim", where)),
                    "pooling": int(need(f, "pooling", where)),
                    "mode": mode,
                    "branch": [int(x) for x in need(f, "branch", where)],
                }
            )
        inter = need(raw, "interaction", "the spec")
        if isinstance(inter, str) and inter.lower() in ("dot", "cat"):
            self.interaction = (inter.lower(), 0, 0)
        elif isinstance(inter, dict) and "Dcn" in inter:
            d = inter["Dcn"]
            self.interaction = ("dcn", int(need(d, "layers", "Dcn")), int(need(d, "rank", "Dcn")))
        else:
            raise NotExpressible("interaction %r is not one this script knows" % (inter,))
        if not self.top or self.top[-1] != 1:
            raise InputError("%s: the top MLP must end in width 1, got %s" % (path, self.top))
        if not self.features:
            raise InputError("%s: the spec has no sparse features" % path)


class Weights:
    def __init__(self, mods, path):
        np = mods["numpy"]
        from safetensors.numpy import load_file

        try:
            self.t = load_file(path)
        except FileNotFoundError:
            raise InputError("%s: no such file" % path)
        except Exception as e:  # safetensors raises its own error types
            raise InputError("%s: not a safetensors file: %s" % (path, e))
        self.path = path
        self.np = np

    def get(self, name, shape):
        if name not in self.t:
            raise InputError("%s: tensor `%s` is missing (expected f32 %s)" % (self.path, name, list(shape)))
        a = self.t[name]
        if a.dtype != self.np.float32:
            raise InputError("%s: tensor `%s` has dtype %s, expected float32" % (self.path, name, a.dtype))
        if list(a.shape) != list(shape):
            raise InputError(
                "%s: tensor `%s` has shape %s, expected %s" % (self.path, name, list(a.shape), list(shape))
            )
        return a


class Builder:
    """Collects ONNX nodes and initialisers."""

    def __init__(self, mods):
        self.onnx = mods["onnx"]
        self.np = mods["numpy"]
        self.nodes = []
        self.inits = []
        self.n = 0

    def fresh(self, hint):
        self.n += 1
        return "%s_%d" % (hint, self.n)

    def const(self, name, array):
        self.inits.append(self.onnx.numpy_helper.from_array(array, name))
        return name

    def op(self, kind, inputs, hint, **attrs):
        out = self.fresh(hint)
        self.nodes.append(self.onnx.helper.make_node(kind, inputs, [out], name=out, **attrs))
        return out

    def linear(self, w, prefix, x, fan_in, out, relu):
        """y = x W^T + b (W is [out, in], PyTorch's nn.Linear layout), then Relu."""
        wn = self.const(prefix + ".weight", w.get(prefix + ".weight", [out, fan_in]))
        bn = self.const(prefix + ".bias", w.get(prefix + ".bias", [out]))
        y = self.op("Gemm", [x, wn, bn], prefix, transB=1)
        return self.op("Relu", [y], prefix + ".relu") if relu else y


def build_model(mods, spec, w, ragged):
    """The ONNX model of `spec` with the weights `w`; `ragged` picks the EmbeddingBag form."""
    onnx = mods["onnx"]
    np = mods["numpy"]
    TP = onnx.TensorProto
    g = Builder(mods)
    inputs = [onnx.helper.make_tensor_value_info("dense", TP.FLOAT, ["B", spec.dense])]
    x = "dense"
    width = spec.dense
    for i, o in enumerate(spec.bottom):
        x = g.linear(w, "bottom.%d" % i, x, width, o, True)
        width = o
    vectors = [(x, width)]
    if ragged:
        # [B, 1] zeros-shaped helpers for the bag sums: the batch size from `dense`.
        b_dim = g.op("Shape", ["dense"], "batch", start=0, end=1)
    for f in spec.features:
        name = f["name"]
        table = g.const("emb.%s.weight" % name, w.get("emb.%s.weight" % name, [f["rows"], f["dim"]]))
        if not ragged:
            inputs.append(onnx.helper.make_tensor_value_info(name, TP.INT64, ["B", "P_" + name]))
            rows = g.op("Gather", [table, name], "lookup." + name, axis=0)  # [B, P, dim]
            axes = g.const("axes1." + name, np.array([1], dtype=np.int64))
            reduce = "ReduceSum" if f["mode"] == "sum" else "ReduceMean"
            v = g.op(reduce, [rows, axes], "pool." + name, keepdims=0)  # [B, dim]
        else:
            seg = name + "_bag"
            inputs.append(onnx.helper.make_tensor_value_info(name, TP.INT64, ["N_" + name]))
            inputs.append(onnx.helper.make_tensor_value_info(seg, TP.INT64, ["N_" + name, 1]))
            rows = g.op("Gather", [table, name], "lookup." + name, axis=0)  # [N, dim]
            dim = g.const("dim." + name, np.array([f["dim"]], dtype=np.int64))
            shape = g.op("Concat", [b_dim, dim], "bagshape." + name, axis=0)
            zeros = g.op(
                "ConstantOfShape",
                [shape],
                "zeros." + name,
                value=onnx.helper.make_tensor("z", TP.FLOAT, [1], [0.0]),
            )
            v = g.op("ScatterND", [zeros, seg, rows], "pool." + name, reduction="add")  # [B, dim]
            if f["mode"] == "mean":
                one = g.const("one." + name, np.array([1], dtype=np.int64))
                cshape = g.op("Concat", [b_dim, one], "cntshape." + name, axis=0)
                czeros = g.op(
                    "ConstantOfShape",
                    [cshape],
                    "czeros." + name,
                    value=onnx.helper.make_tensor("z", TP.FLOAT, [1], [0.0]),
                )
                ones = g.op(
                    "ConstantOfShape",
                    [g.op("Shape", [seg], "segshape." + name)],
                    "ones." + name,
                    value=onnx.helper.make_tensor("o", TP.FLOAT, [1], [1.0]),
                )
                count = g.op("ScatterND", [czeros, seg, ones], "count." + name, reduction="add")
                floor = g.const("floor." + name, np.array(1.0, dtype=np.float32))
                count = g.op("Max", [count, floor], "count1." + name)  # an empty bag gives zeros
                v = g.op("Div", [v, count], "mean." + name)
        width = f["dim"]
        for i, o in enumerate(f["branch"]):
            v = g.linear(w, "branch.%s.%d" % (name, i), v, width, o, True)
            width = o
        vectors.append((v, width))
    kind, layers, rank = spec.interaction
    if kind == "dot":
        d = vectors[0][1]
        if any(wd != d for _, wd in vectors):
            raise NotExpressible("dot interaction over vectors of different widths")
        n = len(vectors)
        ax = g.const("axes_dot", np.array([1], dtype=np.int64))
        stacked = g.op(
            "Concat", [g.op("Unsqueeze", [v, ax], "unsq") for v, _ in vectors], "stack", axis=1
        )  # [B, n, d]
        gram = g.op("MatMul", [stacked, g.op("Transpose", [stacked], "stackT", perm=[0, 2, 1])], "gram")
        flat = g.op("Flatten", [gram], "gram_flat", axis=1)  # [B, n * n]
        tri = np.array([i * n + j for i in range(1, n) for j in range(i)], dtype=np.int64)
        pairs = g.op("Gather", [flat, g.const("lower_triangle", tri)], "pairs", axis=1)
        z = g.op("Concat", [vectors[0][0], pairs], "interaction", axis=1)
        width = d + len(tri)
    else:
        z = g.op("Concat", [v for v, _ in vectors], "interaction", axis=1)
        width = sum(wd for _, wd in vectors)
        if kind == "dcn":
            # x_{l+1} = x0 * (U (V x_l) + bias) + x_l
            x0 = z
            for l in range(layers):
                v = g.const("cross.%d.v" % l, w.get("cross.%d.v" % l, [rank, width]))
                u = g.const("cross.%d.u" % l, w.get("cross.%d.u" % l, [width, rank]))
                b = g.const("cross.%d.bias" % l, w.get("cross.%d.bias" % l, [width]))
                vx = g.op("Gemm", [z, v], "cross%d.v" % l, transB=1)
                uvb = g.op("Gemm", [vx, u, b], "cross%d.u" % l, transB=1)
                z = g.op("Add", [g.op("Mul", [x0, uvb], "cross%d.mul" % l), z], "cross%d" % l)
    for i, o in enumerate(spec.top):
        last = i == len(spec.top) - 1
        z = g.linear(w, "top.%d" % i, z, width, o, not last)
        width = o
    prob = g.op("Sigmoid", [z], "sigmoid")
    g.nodes.append(onnx.helper.make_node("Flatten", [prob], ["scores"], axis=0))  # [1, B]
    outputs = [onnx.helper.make_tensor_value_info("scores", TP.FLOAT, [1, "B"])]
    graph = onnx.helper.make_graph(g.nodes, spec.name, inputs, outputs, g.inits)
    model = onnx.helper.make_model(
        graph, opset_imports=[onnx.helper.make_opsetid("", OPSET)], producer_name="streamrec-onnx-peer"
    )
    model.ir_version = min(model.ir_version, 8)
    return model


def read_raw(mods, folder, name, dtype, count, what):
    np = mods["numpy"]
    path = os.path.join(folder, name)
    try:
        a = np.fromfile(path, dtype=dtype)
    except OSError as e:
        raise InputError("%s: %s" % (path, e.strerror or e))
    if a.size != count:
        raise InputError("%s (%s): expected %d values, got %d" % (path, what, count, a.size))
    return a


def load_batches(mods, spec, folder):
    np = mods["numpy"]
    path = os.path.join(folder, "batches.json")
    raw = read_json(path)
    if not isinstance(raw, list) or not raw:
        raise InputError("%s: expected a non-empty list of batches" % path)
    out = []
    for bi, b in enumerate(raw):
        try:
            size = int(b["size"])
            dense = read_raw(mods, folder, b["dense"], "<f4", size * spec.dense, "dense").reshape(size, spec.dense)
            feats = []
            for f in spec.features:
                fb = b["features"][f["name"]]
                offsets = read_raw(mods, folder, fb["offsets"], "<i8", size, f["name"] + "_offsets")
                idx_path = os.path.join(folder, fb["indices"])
                indices = np.fromfile(idx_path, dtype="<i8")
                feats.append((indices.astype(np.int64), offsets.astype(np.int64)))
        except (KeyError, TypeError, ValueError) as e:
            raise InputError("%s: batch %d is malformed (%s)" % (path, bi, e))
        except OSError as e:
            raise InputError("%s: batch %d: %s" % (path, bi, e))
        for f, (indices, offsets) in zip(spec.features, feats):
            n = indices.size
            if size < 1 or offsets[0] != 0 or np.any(np.diff(offsets) < 0) or offsets[-1] > n:
                raise InputError("%s: batch %d: %s_offsets are not valid bag starts" % (path, bi, f["name"]))
            if n and (indices.min() < 0 or indices.max() >= f["rows"]):
                raise InputError(
                    "%s: batch %d: %s has an index outside 0..%d" % (path, bi, f["name"], f["rows"])
                )
        out.append({"size": size, "dense": np.ascontiguousarray(dense, dtype=np.float32), "features": feats})
    return out


def fixed_pooling(mods, spec, batch):
    """Per feature the bag size when every bag of the batch has the same size >= 1, else None."""
    np = mods["numpy"]
    sizes = []
    for indices, offsets in batch["features"]:
        lens = np.diff(np.append(offsets, indices.size))
        if lens.size == 0 or lens[0] < 1 or np.any(lens != lens[0]):
            return None
        sizes.append(int(lens[0]))
    return sizes


def feeds(mods, spec, batch, ragged):
    np = mods["numpy"]
    feed = {"dense": batch["dense"]}
    b = batch["size"]
    for f, (indices, offsets) in zip(spec.features, batch["features"]):
        if ragged:
            lens = np.diff(np.append(offsets, indices.size))
            feed[f["name"]] = indices
            feed[f["name"] + "_bag"] = np.repeat(np.arange(b, dtype=np.int64), lens).reshape(-1, 1)
        else:
            feed[f["name"]] = indices.reshape(b, -1)
    return feed


class Peer:
    """The exported model in both forms, built on first use, as ORT sessions."""

    def __init__(self, mods, folder, scratch):
        self.mods = mods
        self.folder = folder
        self.scratch = scratch
        spec_path = os.path.join(folder, "model.json")
        self.spec = Spec(read_json(spec_path), spec_path)
        self.weights = Weights(mods, os.path.join(folder, "weights.safetensors"))
        self.paths = {}

    def model_path(self, ragged):
        if ragged not in self.paths:
            onnx = self.mods["onnx"]
            model = build_model(self.mods, self.spec, self.weights, ragged)
            path = os.path.join(self.scratch, "model-%s.onnx" % ("ragged" if ragged else "fixed"))
            # Tables beyond protobuf's 2 GB limit: the tensors go into a side file.
            onnx.save_model(
                model,
                path,
                save_as_external_data=True,
                all_tensors_to_one_file=True,
                location=os.path.basename(path) + ".data",
                size_threshold=1024,
            )
            del model
            self.paths[ragged] = path
        return self.paths[ragged]

    def session(self, ragged, intra, inter=1, parallel=False):
        ort = self.mods["onnxruntime"]
        so = ort.SessionOptions()
        so.intra_op_num_threads = intra
        so.inter_op_num_threads = inter
        so.execution_mode = ort.ExecutionMode.ORT_PARALLEL if parallel else ort.ExecutionMode.ORT_SEQUENTIAL
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.log_severity_level = 3
        return ort.InferenceSession(self.model_path(ragged), so, providers=["CPUExecutionProvider"])


def check(mods, args, scratch):
    peer = Peer(mods, args.dir, scratch)
    batches = load_batches(mods, peer.spec, args.dir)
    sessions = {}
    scores, forms = [], []
    for batch in batches:
        ragged = fixed_pooling(mods, peer.spec, batch) is None
        if ragged not in sessions:
            sessions[ragged] = peer.session(ragged, 1)
        (out,) = sessions[ragged].run(["scores"], feeds(mods, peer.spec, batch, ragged))
        scores.append([float(x) for x in out.reshape(-1)])
        forms.append("ragged" if ragged else "fixed")
    path = args.out or os.path.join(args.dir, "ort-scores.json")
    with open(path, "w", encoding="utf-8") as f:
        json.dump({"model": peer.spec.name, "scores": scores, "form": forms}, f)
    print("onnx_peer: %s: %d batch(es) scored (%s) -> %s" % (peer.spec.name, len(batches), ", ".join(forms), path), file=sys.stderr)


SETTINGS = {
    # name: (intra-op threads, inter-op threads, parallel execution mode)
    "intra1": (1, 1, False),
    "intra2": (2, 1, False),
    "intra1-inter2": (1, 2, True),
    "intra2-inter2": (2, 2, True),
}


def percentile(sorted_v, q):
    i = min(len(sorted_v) - 1, max(0, int(round(q * (len(sorted_v) - 1)))))
    return sorted_v[i]


def time_mode(mods, args, scratch):
    ort = mods["onnxruntime"]
    peer = Peer(mods, args.dir, scratch)
    batches = load_batches(mods, peer.spec, args.dir)
    by_size = group_by_size(batches)
    names = [s.strip() for s in args.threads.split(",") if s.strip()]
    for n in names:
        if n not in SETTINGS:
            raise InputError("--threads: unknown setting `%s` (known: %s)" % (n, ", ".join(SETTINGS)))
    results = {size: {} for size in by_size}
    for n in names:
        intra, inter, parallel = SETTINGS[n]
        sessions = {}
        for size, group in sorted(by_size.items()):
            prepared = prepare(mods, peer, group, n, sessions)
            r = time_one(prepared, args.warmup, args.budget_ms, args.iters, 5)
            r.update({"intra_op_threads": intra, "inter_op_threads": inter, "parallel": parallel})
            results[size][n] = r
        del sessions
    out = {
        "model": peer.spec.name,
        "onnxruntime": ort.__version__,
        "opset": OPSET,
        "batches": [],
    }
    for size in sorted(results):
        settings = results[size]
        best = min(settings, key=lambda k: settings[k]["p50_us"])
        out["batches"].append(
            {"batch": size, "settings": settings, "best": best, "best_p50_us": settings[best]["p50_us"]}
        )
    json.dump(out, sys.stdout, indent=1)
    print()


def group_by_size(batches):
    """The batches by their size, each list in file order."""
    by_size = {}
    for batch in batches:
        by_size.setdefault(batch["size"], []).append(batch)
    return by_size


def prepare(mods, peer, group, setting, sessions):
    """(session, feed) pairs for the batches of `group` with the thread `setting`; a session per
    graph form, built on first use and kept in `sessions` (keyed by setting and form)."""
    intra, inter, parallel = SETTINGS[setting]
    pairs = []
    for batch in group:
        ragged = fixed_pooling(mods, peer.spec, batch) is None
        key = (setting, ragged)
        if key not in sessions:
            sessions[key] = peer.session(ragged, intra, inter, parallel)
        pairs.append((sessions[key], feeds(mods, peer.spec, batch, ragged)))
    return pairs


def time_one(prepared, warmup, budget_ms, iters, min_runs):
    """p50/p99 of up to `iters` runs (at least `min_runs`, then while the budget lasts) over the
    prepared (session, feed) pairs, after `warmup` untimed runs."""
    for i in range(warmup):
        sess, feed = prepared[i % len(prepared)]
        sess.run(["scores"], feed)
    lat = []
    deadline = time.perf_counter() + budget_ms / 1000.0
    while len(lat) < iters and (len(lat) < min_runs or time.perf_counter() < deadline):
        sess, feed = prepared[len(lat) % len(prepared)]
        t0 = time.perf_counter()
        sess.run(["scores"], feed)
        lat.append((time.perf_counter() - t0) * 1e6)
    lat.sort()
    return {"p50_us": percentile(lat, 0.5), "p99_us": percentile(lat, 0.99), "iters": len(lat)}


def serve_mode(mods, args, scratch):
    """Times on request, so a caller can interleave ORT's rounds with its own: one command per
    line on stdin, `time SIZE SETTING BUDGET_MS` (one JSON line back) or `quit`. Sessions are
    built on first use and kept."""
    ort = mods["onnxruntime"]
    peer = Peer(mods, args.dir, scratch)
    batches = load_batches(mods, peer.spec, args.dir)
    by_size = group_by_size(batches)
    sessions = {}
    prepared = {}
    print(json.dumps({"ready": True, "onnxruntime": ort.__version__, "sizes": sorted(by_size)}), flush=True)
    for line in sys.stdin:
        words = line.split()
        if not words:
            continue
        if words[0] == "quit":
            break
        try:
            if words[0] != "time" or len(words) != 4:
                raise InputError("expected `time SIZE SETTING BUDGET_MS` or `quit`, got %r" % line.strip())
            size, name, budget = int(words[1]), words[2], float(words[3])
            if name not in SETTINGS:
                raise InputError("unknown setting `%s` (known: %s)" % (name, ", ".join(SETTINGS)))
            if size not in by_size:
                raise InputError("no exported batch of size %d" % size)
            if not budget > 0:
                raise InputError("the budget must be > 0 ms")
            if (size, name) not in prepared:
                prepared[(size, name)] = prepare(mods, peer, by_size[size], name, sessions)
            r = time_one(prepared[(size, name)], 2, budget, 400, 3)
            r.update({"batch": size, "setting": name})
            print(json.dumps(r), flush=True)
        except InputError as e:
            print(json.dumps({"error": str(e)}), flush=True)


def main():
    p = argparse.ArgumentParser(description="ONNX Runtime as a peer of the StreamRec engine.")
    sub = p.add_subparsers(dest="mode", required=True)
    c = sub.add_parser("check", help="score every exported batch with ORT")
    c.add_argument("dir", help="the export folder (model.json, weights.safetensors, batches.json)")
    c.add_argument("--out", help="where the scores go (default DIR/ort-scores.json)")
    t = sub.add_parser("time", help="time ORT per batch size and thread setting (JSON on stdout)")
    t.add_argument("dir", help="the export folder (model.json, weights.safetensors, batches.json)")
    t.add_argument("--threads", default="intra1,intra2,intra1-inter2", help="settings: " + ", ".join(SETTINGS))
    t.add_argument("--budget-ms", type=float, default=900.0, help="time per batch size and setting")
    t.add_argument("--iters", type=int, default=400, help="at most this many timed runs")
    t.add_argument("--warmup", type=int, default=5, help="untimed runs first")
    v = sub.add_parser("serve", help="time on request: `time SIZE SETTING BUDGET_MS` per stdin line, JSON lines back")
    v.add_argument("dir", help="the export folder (model.json, weights.safetensors, batches.json)")
    args = p.parse_args()
    if not os.path.isdir(args.dir):
        print("onnx_peer: %s: not a folder" % args.dir, file=sys.stderr)
        return EXIT_USAGE
    if args.mode == "time" and (args.iters < 1 or args.warmup < 0 or not args.budget_ms > 0):
        print("onnx_peer: --iters must be >= 1, --warmup >= 0 and --budget-ms > 0", file=sys.stderr)
        return EXIT_USAGE
    mods = import_packages()
    try:
        with tempfile.TemporaryDirectory(prefix="onnx-peer-") as scratch:
            if args.mode == "check":
                check(mods, args, scratch)
            elif args.mode == "serve":
                serve_mode(mods, args, scratch)
            else:
                time_mode(mods, args, scratch)
    except InputError as e:
        print("onnx_peer: %s" % e, file=sys.stderr)
        return EXIT_USAGE
    except NotExpressible as e:
        print("onnx_peer: not expressible: %s" % e, file=sys.stderr)
        return EXIT_NOT_EXPRESSIBLE
    return 0


if __name__ == "__main__":
    sys.exit(main())
