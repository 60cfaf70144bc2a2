# Sourced by the guest build scripts.

# stale OUT INPUT...: true when OUT is missing or older than any INPUT.
stale() {
    local out="$1" input
    shift
    [[ -f "$out" ]] || return 0
    for input in "$@"; do
        [[ "$input" -nt "$out" ]] && return 0
    done
    return 1
}
