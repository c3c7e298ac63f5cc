#!/usr/bin/env bash
# Opens a page in headless Chromium (Debian's package) and writes a screenshot and the DOM as it
# is after the page's scripts ran; the browser's own log, console messages included, goes to
# stderr. Used by tests/plan_html.rs; runs by hand too:
#
#   bash tests/browser/render.sh 'file:///abs/plan.html#algo=streamrec' shot.png dom.html [1600,1700]
#
# CHROMIUM names the browser (default: chromium on PATH, else /usr/bin/chromium). Each start gets
# a new empty profile, and the flags keep Chromium off the network (this page needs none).
set -euo pipefail
if [ $# -lt 3 ]; then
  echo "usage: $0 URL SCREENSHOT.png DOM.html [WIDTH,HEIGHT]" >&2
  exit 2
fi
url=$1
png=$2
dom=$3
size=${4:-1600,1700}
chromium=${CHROMIUM:-$(command -v chromium || echo /usr/bin/chromium)}
profiles=$(mktemp -d)
trap 'rm -rf "$profiles"' EXIT
run() {
  local profile
  profile=$(mktemp -d "$profiles/p.XXXXXX")
  timeout 90 "$chromium" --headless --no-sandbox --disable-gpu --disable-quic --no-first-run \
    --disable-background-networking --disable-component-update --disable-sync \
    --disable-extensions --hide-scrollbars --user-data-dir="$profile" \
    --enable-logging=stderr --v=0 --window-size="$size" "$@"
}
run --screenshot="$png" "$url"
run --dump-dom "$url" >"$dom"
