"""Interop check with Triton's own gRPC clients (tritonclient[grpc], sync and asyncio) against
the KServe v2 gRPC endpoint of `streamrec serve`.

Usage: triton_grpc.py HOST:GRPC_PORT MODEL REQUEST.json EXPECTED.json

REQUEST.json is a KServe v2 body (`streamrec run --emit-request`), EXPECTED.json the response of
`streamrec run --input REQUEST.json`. Checks health, server and model metadata, the model
configuration and statistics, infer with raw tensor contents (tritonclient's gRPC encoding),
whose scores must equal the expected ones exactly (fp32), with the sync and the asyncio client,
also gzip- and deflate-compressed, and a compressed request inflating past the body limit
refused;
and that bad inputs (an unknown tensor, a wrong shape, an index out of range) are answered with
INVALID_ARGUMENT and a message naming the tensor. Prints one line per check; exits non-zero on
the first failure.
"""

import asyncio

import numpy as np
from interop_case import load_case
import tritonclient.grpc as grpcclient
import tritonclient.grpc.aio as aioclient
from tritonclient.grpc import model_config_pb2
from tritonclient.utils import InferenceServerException

DTYPES = {"FP32": np.float32, "INT64": np.int64, "INT32": np.int32}


def arrays(request):
    return [
        (t["name"], t["datatype"], np.array(t["data"], dtype=DTYPES[t["datatype"]]).reshape(t["shape"]))
        for t in request["inputs"]
    ]


def make_inputs(module, tensors):
    inputs = []
    for name, datatype, arr in tensors:
        inp = module.InferInput(name, list(arr.shape), datatype)
        inp.set_data_from_numpy(arr)
        inputs.append(inp)
    return inputs


def bad_cases(tensors):
    """(what, tensors, the tensor the message must name)."""
    extra = list(tensors) + [("bogus", "INT64", np.zeros(1, dtype=np.int64))]
    dense = [(n, d, a.reshape(-1) if n == "dense" else a) for n, d, a in tensors]
    feature = next(n for n, d, _ in tensors if d != "FP32" and not n.endswith("_offsets"))
    out_of_range = []
    for n, d, a in tensors:
        if n == feature:
            a = a.copy()
            a[0] = 1 << 40
        out_of_range.append((n, d, a))
    return [
        ("unknown tensor", extra, "bogus"),
        ("wrong shape", dense, "dense"),
        ("index out of range", out_of_range, feature),
    ]


def check_error(what, e, tensor):
    assert e.status() == "StatusCode.INVALID_ARGUMENT", (what, e.status(), e.message())
    assert tensor in e.message(), (what, e.message())
    print(f"bad input ({what}): INVALID_ARGUMENT naming `{tensor}`: {e.message()}")


def sync_checks(url, model, tensors, expected):
    client = grpcclient.InferenceServerClient(url=url)
    assert client.is_server_live(), "server not live"
    assert client.is_server_ready(), "server not ready"
    assert client.is_model_ready(model), "model not ready"
    assert client.is_model_ready(model, "1"), "model version 1 not ready"
    print("health: live, ready, model ready")

    meta = client.get_server_metadata()
    for ext in ("binary_tensor_data", "model_configuration", "statistics"):
        assert ext in meta.extensions, meta
    model_meta = client.get_model_metadata(model)
    names = [i.name for i in model_meta.inputs]
    assert names == [n for n, _, _ in tensors], names
    assert model_meta.outputs[0].name == "score" and model_meta.outputs[0].datatype == "FP32"
    assert list(model_meta.versions) == ["1"], model_meta
    print(f"metadata: {len(names)} inputs, output score")

    config = client.get_model_config(model).config
    assert config.name == model, config
    assert [i.name for i in config.input] == names, config
    assert config.input[0].data_type == model_config_pb2.TYPE_FP32, config
    assert config.input[1].data_type == model_config_pb2.TYPE_INT64, config
    assert config.output[0].name == "score", config
    assert config.backend == "streamrec", config
    assert config.HasField("dynamic_batching"), config
    print(f"model config: {len(config.input)} inputs, max_batch_size {config.max_batch_size}")

    for _ in range(3):
        result = client.infer(model, make_inputs(grpcclient, tensors), request_id="grpc-1")
        scores = result.as_numpy("score")
        assert scores.shape == (len(expected), 1), scores.shape
        assert np.array_equal(scores.reshape(-1), expected), (scores.reshape(-1), expected)
        assert result.get_response().id == "grpc-1"
    outputs = [grpcclient.InferRequestedOutput("score")]
    result = client.infer(model, make_inputs(grpcclient, tensors), outputs=outputs)
    assert np.array_equal(result.as_numpy("score").reshape(-1), expected)
    print(f"infer (sync, raw contents): {len(expected)} scores equal `streamrec run --input`")

    for algo in ("gzip", "deflate"):
        result = client.infer(model, make_inputs(grpcclient, tensors), compression_algorithm=algo)
        assert np.array_equal(result.as_numpy("score").reshape(-1), expected), algo
        print(f"infer (sync, {algo}-compressed): {len(expected)} scores equal")
    # A small compressed request that inflates past the server's body limit (1 MiB in this
    # test's config) is refused while it is decompressed, never answered.
    bomb = [(n, d, np.zeros((1, 2_000_000), np.float32) if n == "dense" else a) for n, d, a in tensors]
    try:
        client.infer(model, make_inputs(grpcclient, bomb), compression_algorithm="gzip")
    except InferenceServerException as e:
        assert e.status() in ("StatusCode.RESOURCE_EXHAUSTED", "StatusCode.OUT_OF_RANGE"), (e.status(), e.message())
        print(f"compressed request past the body limit: {e.status().split('.')[-1]}")
    else:
        raise AssertionError("a request inflating past the body limit was answered")

    for what, bad, tensor in bad_cases(tensors):
        try:
            client.infer(model, make_inputs(grpcclient, bad))
        except InferenceServerException as e:
            check_error(what, e, tensor)
        else:
            raise AssertionError(f"{what}: accepted")
    try:
        client.get_model_metadata("nosuchmodel")
    except InferenceServerException as e:
        assert e.status() == "StatusCode.NOT_FOUND", e.status()
    else:
        raise AssertionError("unknown model: accepted")

    for name in ("", model):
        stats = client.get_inference_statistics(model_name=name).model_stats
        assert len(stats) == 1 and stats[0].name == model, stats
        s = stats[0].inference_stats
        assert s.success.count >= 4, s
        assert s.fail.count >= 3, s
        assert s.success.ns > 0 and s.compute_infer.ns > 0, s
        assert stats[0].inference_count >= 4 * len(expected), stats
        assert stats[0].execution_count >= 1 and stats[0].batch_stats, stats
    print(f"statistics: {s.success.count} successful, {s.fail.count} failed requests")
    client.close()


async def aio_checks(url, model, tensors, expected):
    client = aioclient.InferenceServerClient(url=url)
    try:
        assert await client.is_server_live()
        assert await client.is_model_ready(model)
        results = await asyncio.gather(
            *[client.infer(model, make_inputs(aioclient, tensors), request_id=f"aio-{i}") for i in range(8)]
        )
        for i, r in enumerate(results):
            assert np.array_equal(r.as_numpy("score").reshape(-1), expected), i
            assert r.get_response().id == f"aio-{i}"
        print(f"infer (asyncio, 8 concurrent): {len(expected)} scores equal `streamrec run --input`")
        _, bad, tensor = bad_cases(tensors)[0]
        try:
            await client.infer(model, make_inputs(aioclient, bad))
        except InferenceServerException as e:
            check_error("unknown tensor, asyncio", e, tensor)
        else:
            raise AssertionError("asyncio: unknown tensor accepted")
    finally:
        await client.close()


def main() -> None:
    url, model, request, expected = load_case()
    tensors = arrays(request)
    sync_checks(url, model, tensors, expected)
    asyncio.run(aio_checks(url, model, tensors, expected))
    print("tritonclient grpc interop: ok")


if __name__ == "__main__":
    main()
