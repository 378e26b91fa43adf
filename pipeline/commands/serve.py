"""`mlp serve`: a registered model over HTTP, on MLflow's own scoring server (the one `mlflow models serve` runs),
on 127.0.0.1 unless --host says otherwise, from the store the stages log to.

    mlp serve                                      # models:/<params.yaml's registered model>@champion, port 5001
    mlp serve --model models:/pima-mlp/3 --port 8080
    curl -s localhost:5001/invocations -H 'Content-Type: application/json' -d '{"inputs": [[0, 0, ...]]}'

Its one difference: a request the model cannot read gets one line saying what was wrong and what to send,
where MLflow's server quotes the input back or adds a Python traceback. Ctrl-C stops it.
"""

import argparse
import json
import logging

from pipeline.config import load_params

INVOCATIONS = "/invocations"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = __doc__
    parser.add_argument("--model", help="models:/<name>@<alias> or models:/<name>/<version> (default: the champion)")
    parser.add_argument("--host", default="127.0.0.1", help="the address to listen on (default: 127.0.0.1)")
    parser.add_argument("--port", type=int, default=5001, help="the port to listen on (default: 5001)")


def run(arguments: argparse.Namespace) -> None:
    # Imported here: `mlp serve --help` answers without waiting for MLflow and TensorFlow.
    import mlflow
    import uvicorn
    from mlflow.pyfunc.scoring_server import init

    from pipeline.tracking import registered_model_store, shown

    uri = arguments.model or f"models:/{load_params().mlflow.registered_model_name}@champion"
    with registered_model_store(uri) as store:
        model = mlflow.pyfunc.load_model(uri)
    app = init(model)
    # It warns of `instances` inputs after every refused request, whichever key the request used.
    logging.getLogger("mlflow.pyfunc.scoring_server").setLevel(logging.ERROR)
    schema = model.metadata.get_input_schema()
    tensor = schema.inputs[0] if schema is not None and schema.is_tensor_spec() else None
    wanted = "JSON, as the model's signature says."
    if tensor:
        wanted = f'JSON {{"inputs": [rows of {tensor.shape[-1]} {tensor.type} values]}}.'

    @app.middleware("http")
    async def one_line_errors(request, call_next):
        from fastapi.responses import JSONResponse

        csv = request.headers.get("content-type", "").startswith("text/csv")
        if tensor and csv and request.url.path == INVOCATIONS:
            # MLflow's CSV reader asks a tensor signature for column names, and answers with a traceback.
            return JSONResponse({"error_code": "BAD_REQUEST", "message": f"text/csv is not read. Send {wanted}"}, 415)
        response = await call_next(request)
        if request.url.path != INVOCATIONS or response.status_code < 400:
            return response
        body = b"".join([chunk async for chunk in response.body_iterator])
        error = json.loads(body) if body.startswith(b"{") else {"message": body.decode(errors="replace")}
        message = f"{one_line(error.get('message', '')).rstrip('.')}. Send {wanted}"
        error_code = error.get("error_code", "BAD_REQUEST")
        return JSONResponse({"error_code": error_code, "message": message}, response.status_code)

    print(f"serving {uri} from {shown(store)} on http://{arguments.host}:{arguments.port}{INVOCATIONS}", flush=True)
    uvicorn.run(app, host=arguments.host, port=arguments.port, log_level="warning")


def one_line(message: str) -> str:
    """The reason in an MLflow scoring error: its last "Error: " part, without the input it quotes."""
    lines = message.rsplit("Error: ", 1)[-1].strip().splitlines()
    return lines[0].strip("'") if lines else "The request could not be read"
