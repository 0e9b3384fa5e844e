#!/bin/sh
# Generate the gRPC code in funnel/v1 (the public API) and funnel/v2 (the stage contracts) from
# protos/ (run from the repository root). The Makefile and every Dockerfile call this, so the code
# is generated one way everywhere.
# $1: the Python that has grpcio-tools (default: python).
set -eu
python="${1:-python}"
rm -rf funnel/v1 funnel/v2
mkdir -p funnel/v1 funnel/v2
"$python" -m grpc_tools.protoc -Iprotos --python_out=. --pyi_out=. --grpc_python_out=. \
  protos/funnel/v1/*.proto protos/funnel/v2/*.proto
touch funnel/v1/__init__.py funnel/v2/__init__.py
