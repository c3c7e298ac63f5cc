"""The command line both tritonclient interop checks take: HOST:PORT MODEL REQUEST.json
EXPECTED.json, read into (url, model, request body, expected scores as fp32)."""

import json
import sys

import numpy as np


def load_case():
    url, model, request_path, expected_path = sys.argv[1:5]
    with open(request_path) as f:
        request = json.load(f)
    with open(expected_path) as f:
        expected = np.array(json.load(f)["outputs"][0]["data"], dtype=np.float32)
    return url, model, request, expected
