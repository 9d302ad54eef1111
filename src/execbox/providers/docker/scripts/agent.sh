r() { IFS= read -r -d '' "$1" || exit 219; }
r magic; [ "$magic" = execbox1 ] || exit 219
r nonce; r size; r cwd; r cs; r ch; r fs; r nf
r ne; envs=(); for ((i = 0; i < ne; i++)); do r v; envs+=("$v"); done
r na; args=(); for ((i = 0; i < na; i++)); do r v; args+=("$v"); done
if [ "$size" != 0 ]; then
  head -c "$size" | tar -x -C /work --no-same-owner -m 2>/tmp/.execbox-tar || {
    cat /tmp/.execbox-tar >&2; rm -f /tmp/.execbox-tar; echo "execbox: cannot write the files" >&2; exit 218; }
  rm -f /tmp/.execbox-tar
fi
cd -- "$cwd" || exit 218
ulimit -c 0; ulimit -S -t "$cs"; ulimit -H -t "$ch"; ulimit -f "$fs"; ulimit -n "$nf"
env -- "${envs[@]}" "${args[@]}"
rc=$?
printf '\0execbox-exit:%s:%s\n' "$nonce" "$rc" >&2
exit "$rc"
