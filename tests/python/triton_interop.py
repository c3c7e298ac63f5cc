"""Interop check with Triton's own HTTP client (tritonclient[http]) against `streamrec serve`.

Usage: triton_interop.py HOST:PORT MODEL REQUEST.json EXPECTED.json

REQUEST.json is a KServe v2 body (`streamrec run --emit-request`), EXPECTED.json the response of
`streamrec run --input REQUEST.json`. Checks health, server and model metadata, and infer with
JSON and with binary tensor data (inputs and outputs), whose scores must equal the expected
ones exactly (fp32), also with gzip and deflate compressed requests and responses; then Triton's
model configuration and statistics extensions (get_model_config, get_inference_statistics).
Prints one line per check; exits non-zero on the first failure.
"""


import numpy as np
from interop_case import load_case
import tritonclient.http as httpclient


def main() -> None:
    url, model, request, expected = load_case()

    client = httpclient.InferenceServerClient(url=url)
    assert client.is_server_live(), "server not live"
    assert client.is_server_ready(), "server not ready"
    assert client.is_model_ready(model), "model not ready"
    print("health: live, ready, model ready")

    meta = client.get_server_metadata()
    for ext in ("binary_tensor_data", "model_configuration", "statistics"):
        assert ext in meta["extensions"], meta
    model_meta = client.get_model_metadata(model)
    names = [i["name"] for i in model_meta["inputs"]]
    assert names[0] == "dense" and len(names) == len(request["inputs"]), names
    assert model_meta["outputs"][0]["name"] == "score", model_meta
    print(f"metadata: {len(names)} inputs, output score")

    dtypes = {"FP32": np.float32, "INT64": np.int64, "INT32": np.int32}
    infers = 0
    for binary, compression in [
        (False, None),
        (True, None),
        (False, "gzip"),
        (True, "gzip"),
        (False, "deflate"),
        (True, "deflate"),
    ]:
        inputs = []
        for t in request["inputs"]:
            arr = np.array(t["data"], dtype=dtypes[t["datatype"]]).reshape(t["shape"])
            inp = httpclient.InferInput(t["name"], list(arr.shape), t["datatype"])
            inp.set_data_from_numpy(arr, binary_data=binary)
            inputs.append(inp)
        outputs = [httpclient.InferRequestedOutput("score", binary_data=binary)]
        result = client.infer(
            model,
            inputs,
            outputs=outputs,
            request_id="interop-1",
            request_compression_algorithm=compression,
            response_compression_algorithm=compression,
        )
        infers += 1
        scores = result.as_numpy("score")
        assert scores.shape == (len(expected), 1), scores.shape
        assert np.array_equal(scores.reshape(-1), expected), (scores.reshape(-1), expected)
        assert result.get_response()["id"] == "interop-1"
        mode = "binary" if binary else "JSON"
        if compression:
            mode += f", {compression} both ways"
        print(f"infer ({mode}): {len(expected)} scores equal `streamrec run --input`")

    for version in ("", "1"):
        config = client.get_model_config(model, model_version=version)
        assert config["name"] == model, config
        assert [i["name"] for i in config["input"]] == names, config
        assert config["input"][0]["data_type"] == "TYPE_FP32", config
        assert config["output"][0]["name"] == "score", config
        assert "dynamic_batching" in config, config
    print(f"model config: {len(config['input'])} inputs, max_batch_size {config['max_batch_size']}")

    for name in ("", model):
        stats = client.get_inference_statistics(model_name=name)["model_stats"]
        assert len(stats) == 1 and stats[0]["name"] == model, stats
        s = stats[0]["inference_stats"]
        assert s["success"]["count"] >= infers, s
        assert s["success"]["ns"] > 0 and s["compute_infer"]["ns"] > 0, s
        assert stats[0]["inference_count"] >= infers * len(expected), stats
        assert stats[0]["execution_count"] >= 1 and stats[0]["batch_stats"], stats
    print(f"statistics: {s['success']['count']} successful requests")
    print("tritonclient interop: ok")


if __name__ == "__main__":
    main()
