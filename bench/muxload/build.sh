#!/bin/sh
# Build muxload with Debian's Go and gorilla/websocket (GOPATH mode, no
# module proxy): apt-get install -y golang-go golang-github-gorilla-websocket-dev
set -eu
cd "$(dirname "$0")"
GO111MODULE=off GOPATH=/usr/share/gocode GOFLAGS= go build -o muxload .
echo "built $(pwd)/muxload" >&2
