#!/bin/sh
# claude-sessions' bwrap: the CLI runs every sandboxed command through "bwrap" from PATH, and a
# worker's PATH finds this first. It runs the real bwrap (CLAUDE_SESSIONS_BWRAP) so that
#  - the command sees an allowlist view of the host: the CLI's "--ro-bind / /" is replaced by
#    the arguments in CLAUDE_SESSIONS_VIEW (one per line: system folders, readable /etc, a
#    private /tmp); the CLI's own binds (workspace, its temp folder) then apply on top;
#  - with limits on, it joins the worker's cgroups (CLAUDE_SESSIONS_CGROUPS) first, so
#    everything the command starts counts against SESSION_MEMORY_MB and SESSION_PIDS_MAX,
#    and a command a limit stopped says so on its stderr (the tool result the model reads).
# POSIX sh, no subshell on the hot path: it runs for every command.

real=$CLAUDE_SESSIONS_BWRAP
case $1 in --version|--help|"") exec "$real" "$@" ;; esac
groups=$CLAUDE_SESSIONS_CGROUPS view=$CLAUDE_SESSIONS_VIEW
oom_file=$CLAUDE_SESSIONS_OOM pids_file=$CLAUDE_SESSIONS_PIDS
memory_mb=$CLAUDE_SESSIONS_MEMORY_MB pids_max=$CLAUDE_SESSIONS_PIDS_MAX
unset CLAUDE_SESSIONS_BWRAP CLAUDE_SESSIONS_CGROUPS CLAUDE_SESSIONS_VIEW CLAUDE_SESSIONS_OOM \
    CLAUDE_SESSIONS_PIDS CLAUDE_SESSIONS_MEMORY_MB CLAUDE_SESSIONS_PIDS_MAX

for group in $groups; do
    echo $$ > "$group/cgroup.procs" || {
        echo "claude-sessions: this session's limits could not be applied; the command was not run" >&2
        exit 126
    }
done

# counter FILE KEY: the value of "KEY value" in FILE (0 if absent), in $value.
counter() {
    value=0
    [ -r "$1" ] || return 0
    while read -r key number; do
        if [ "$key" = "$2" ]; then value=$number; return 0; fi
    done < "$1"
}

counter "$oom_file" oom_kill; ooms=$value
counter "$pids_file" max; forks=$value

state=0
for arg do
    shift
    case $state$arg in
        0--ro-bind) state=1; continue ;;
        1/) state=2; continue ;;
        2/) if [ -n "$view" ]; then
                while IFS= read -r line; do set -- "$@" "$line"; done < "$view"
            else
                set -- "$@" --ro-bind / /
            fi
            state=3; continue ;;
        1*) set -- "$@" --ro-bind; state=0 ;;
        2*) set -- "$@" --ro-bind /; state=0 ;;
        0--) state=3 ;;
    esac
    set -- "$@" "$arg"
done

"$real" "$@"
status=$?

counter "$oom_file" oom_kill
if [ "$value" != "$ooms" ]; then
    echo "claude-sessions: a process was killed: this session's tools used more than" \
        "SESSION_MEMORY_MB ($memory_mb MB) of memory" >&2
fi
counter "$pids_file" max
if [ "$value" != "$forks" ]; then
    echo "claude-sessions: a process could not start: this session's tools reached" \
        "SESSION_PIDS_MAX ($pids_max processes and threads)" >&2
fi
exit $status
