#!/usr/bin/env bash
# cluster.sh: a simulated multi-host cluster on one Linux machine, for testing the preflight,
# mpirun and horovodrun against real ssh, real name resolution and real network faults.
#
# Each simulated host hN is a network namespace (<prefix>-hN) with its own interfaces, addresses,
# routes, iptables rules, /etc/hosts (through /etc/netns) and hostname (through a UTS namespace),
# and its own sshd. The hosts are wired to one bridge that lives in a switch namespace
# (<prefix>-sw). Every link is created inside a namespace, so deleting the namespaces removes every
# link, and nothing is ever added to the root namespace: no address, no route, no link.
#
# Run `scripts/cluster.sh --help` for the interface. Needs root (network namespaces).
# 'A && B || fail' below is meant as 'unless A and B, fail'.
# shellcheck disable=SC2015
set -euo pipefail
# ip, sshd and iptables live in sbin, which a minimal or non-login PATH may lack.
export PATH="$PATH:/usr/local/sbin:/usr/sbin:/sbin"

readonly PROG=cluster.sh
readonly PREFIX=${HVSIM_PREFIX:-hvsim}
# Each prefix gets its own state directory by default, so a second cluster never shares one.
readonly STATE=${HVSIM_DIR:-/tmp/$PREFIX}
readonly SUBNET=10.231.0            # host hN is $SUBNET.(10+N)/24
readonly SECOND_NET=10.232          # eth1 of host hN is $SECOND_NET.N.1/24
readonly DEFAULT_HOSTS=3
readonly MAX_HOSTS=32
readonly SSHD=/usr/sbin/sshd
readonly SW_NS="$PREFIX-sw"
readonly MARK_BEGIN="# >>> $PREFIX cluster (scripts/cluster.sh) >>>"
readonly MARK_END="# <<< $PREFIX cluster <<<"
readonly ANY_MARK_BEGIN_RE='^# >>> [a-z][a-z0-9]* cluster \(scripts/cluster\.sh\) >>>$'
readonly MARK_CREATED_FILE="# (cluster.sh created this file; 'cluster.sh down' removes it when empty)"
readonly MARK_CREATED_DIR="# (cluster.sh created this directory; 'cluster.sh down' removes it when empty)"
readonly LOCK_FILE="/run/lock/$PREFIX-cluster.lock"
# Clusters with different prefixes may run at once; all of them edit the same ~/.ssh/config.
readonly SSH_CONFIG_LOCK="/run/lock/hvsim-ssh-config.lock"
# A comment line in every host's /etc/hosts that names the cluster; the ssh client config applies
# only where it is found (see write_ssh_client_config).
readonly HOSTS_TAG="# hvsim-cluster: $PREFIX"
readonly FAULT_KINDS="link loss delay sshd firewall mtu debian-hosts"

usage() {
  cat <<EOF
Usage: scripts/cluster.sh COMMAND [ARGS]

A simulated cluster of hosts h1..hN on this machine: one network namespace per host
($PREFIX-h1..$PREFIX-hN, each with its own sshd, hostname and /etc/hosts) joined by a bridge br0 in
the switch namespace $PREFIX-sw. Host hN has address $SUBNET.(10+N)/24 on eth0; the namespaces
have no default route and nothing is added to the root namespace. Needs root.

Commands:
  up [N] [OPTIONS]   build N hosts (default $DEFAULT_HOSTS, at most $MAX_HOSTS) and wait until every sshd
                     accepts a key login. Idempotent: when the same cluster is already up and
                     healthy it says so; otherwise it tears down and rebuilds.
      --decoy-bridge HOSTS    add a Docker-like bridge docker0 (172.17.0.1/16, UP) on HOSTS
      --second-if HOSTS       add a second interface eth1 ($SECOND_NET.N.1/24, reaching nothing)
      --debian-hosts HOSTS    put Debian's '127.0.1.1 hN' line before the real one in /etc/hosts
      --mtu HOST=MTU[,...]    set the MTU of that host's cluster interface (switch side stays 1500)
      --ifname HOST=NAME[,...] name that host's cluster interface NAME instead of eth0
                     HOSTS is 'all' or a comma list such as h1,h3.
  down               kill every process in the cluster's namespaces, delete the namespaces,
                     /etc/netns/$PREFIX-*, the ssh config block and the state directory. Works on a
                     half-built cluster; prints "nothing to remove" when there is nothing.
  status             hosts, addresses, sshd state and active faults; exit 1 if no cluster is up.
  hosts              the host names, one per line; exit 1 if no cluster is up.
  exec HOST CMD [ARGS...]
                     run CMD on HOST (its network namespace, /etc/hosts and hostname) with stdin,
                     stdout and stderr passed through; exits with CMD's status.
  fault HOST KIND on|off [VALUE]
                     inject (on) or clear (off) a fault; idempotent; 'status' lists active ones.
      link           the cluster interface goes down (off: up)
      loss [PCT]     drop PCT% (default 30) of packets arriving at HOST (iptables statistic)
      delay [MS]     add MS ms (default 100) of delay with the netem qdisc; exits 3 when the
                     kernel has no netem
      sshd           stop HOST's sshd (off: start it again)
      firewall       drop new incoming TCP connections to ports 1024-65535 (ssh on 22 still works)
      mtu [MTU]      set the cluster interface MTU (default 1400; off: back to 1500)
      debian-hosts   add Debian's '127.0.1.1 HOST' line to HOST's /etc/hosts (off: remove it,
                     also when 'up --debian-hosts' put it there); running sessions see the change

Files: the state directory ($STATE here; \$HVSIM_DIR, default /tmp/<prefix>) holds
id_ed25519 (the cluster's client key), known_hosts (each host key under the host's name and
address), ssh_config, hosts (lines 'NAME ADDRESS IFNAME'), config, faults/, and hN/ (sshd_config,
ssh_host_ed25519_key, authorized_keys, sshd.pid, uts.pid, sshd.log).
/etc/netns/$PREFIX-hN/hosts is the host's /etc/hosts. 'up' puts 'Include <dir>/ssh_config' at the
top of the launching user's ~/.ssh/config (\$SUDO_USER's under sudo) between the lines
  $MARK_BEGIN
  $MARK_END
and 'down' removes them. ~/.ssh/authorized_keys is never touched; host key checking stays on.

Environment: HVSIM_PREFIX (namespace prefix, default hvsim; lets a second cluster exist beside the
first), HVSIM_DIR (state directory, default /tmp/<prefix>).

Examples:
  sudo scripts/cluster.sh up 3 --decoy-bridge all --debian-hosts h3
  sudo scripts/cluster.sh exec h1 ssh h2 hostname
  sudo scripts/cluster.sh fault h2 firewall on
  sudo scripts/cluster.sh down

Exit status: 0 ok, 1 failure (or not root, or no cluster), 2 bad input, 3 fault not supported here.
EOF
}

# --- messages -----------------------------------------------------------------------------------
say() { printf '%s: %s\n' "$PROG" "$*"; }
warn() { printf '%s: warning: %s\n' "$PROG" "$*" >&2; }
die() { printf '%s: %s\n' "$PROG" "$*" >&2; exit 1; }
bad_input() { printf '%s: %s\n' "$PROG" "$*" >&2; exit 2; }

need_root() {
  [[ $(id -u) -eq 0 ]] || die "needs root (network namespaces); run: sudo scripts/cluster.sh up N"
}

# --- naming and validation -------------------------------------------------------------------------
host_ns() { printf '%s-%s' "$PREFIX" "$1"; }         # h2 -> hvsim-h2
host_addr() { printf '%s.%s' "$SUBNET" "$((10 + $1))"; }  # 2 -> 10.231.0.12

is_uint() { [[ $1 =~ ^[0-9]+$ ]]; }

# The prefix and the state directory end up in interface, namespace and config file names, where
# spaces or odd characters would break things in confusing ways, so refuse them up front.
check_env() {
  [[ $PREFIX =~ ^[a-z][a-z0-9]{0,7}$ ]] ||
    bad_input "HVSIM_PREFIX '$PREFIX' is not 1-8 lowercase letters/digits starting with a letter; unset it or use e.g. HVSIM_PREFIX=hvsim2"
  [[ $STATE =~ ^/[A-Za-z0-9._/-]+$ && $STATE != / ]] ||
    bad_input "HVSIM_DIR '$STATE' must be an absolute path of letters, digits and ._-/; unset it or use e.g. HVSIM_DIR=/tmp/hvsim2"
}

# 'all' or 'h1,h3' -> the host names, checked against N, in host order.
parse_host_list() {
  local spec=$1 n=$2 opt=$3 item i
  local -A seen=()
  if [[ $spec == all ]]; then
    for ((i = 1; i <= n; i++)); do printf 'h%s\n' "$i"; done
    return
  fi
  IFS=, read -ra items <<<"$spec"
  [[ ${#items[@]} -gt 0 ]] || bad_input "$opt needs 'all' or a comma list of hosts such as h1,h2"
  for item in "${items[@]}"; do
    [[ $item =~ ^h([1-9][0-9]*)$ ]] && ((BASH_REMATCH[1] <= n)) ||
      bad_input "$opt: unknown host '$item'; hosts are h1..h$n (or 'all')"
    seen[${BASH_REMATCH[1]}]=1
  done
  for ((i = 1; i <= n; i++)); do [[ -z ${seen[$i]:-} ]] || printf 'h%s\n' "$i"; done
}

# 'h1=9000,h2=1400' -> 'INDEX VALUE' lines, values checked by the regex in $3.
parse_host_map() {
  local spec=$1 n=$2 opt=$3 value_re=$4 what=$5 item host value idx
  IFS=, read -ra items <<<"$spec"
  [[ ${#items[@]} -gt 0 ]] || bad_input "$opt needs HOST=${what}[,HOST=${what}]"
  for item in "${items[@]}"; do
    [[ $item == *=* ]] || bad_input "$opt: '$item' is not HOST=$what"
    host=${item%%=*} value=${item#*=}
    [[ $host =~ ^h([1-9][0-9]*)$ ]] && ((BASH_REMATCH[1] <= n)) ||
      bad_input "$opt: unknown host '$host'; hosts are h1..h$n"
    idx=${BASH_REMATCH[1]}
    [[ $value =~ $value_re ]] || bad_input "$opt: '$value' is not a valid $what for $host"
    printf '%s %s\n' "$idx" "$value"
  done
}

check_mtu() {  # 68 is IPv4's minimum; veth allows up to 65535
  is_uint "$1" && ((10#$1 >= 68 && 10#$1 <= 65535)) || bad_input "MTU '$1' is not a number from 68 to 65535"
}

# --- state of a built cluster ----------------------------------------------------------------------
# $STATE/hosts ('NAME ADDRESS IFNAME' lines) is written last by 'up', so its presence means the
# cluster was completely built.
state_hosts() { [[ -f $STATE/hosts ]] && awk '{print $1}' "$STATE/hosts"; }
host_ifname() { awk -v h="$1" '$1 == h {print $3}' "$STATE/hosts"; }
host_address() { awk -v h="$1" '$1 == h {print $2}' "$STATE/hosts"; }
ns_exists() { [[ -e /run/netns/$1 ]]; }

# Our namespaces only: exactly <prefix>-sw and <prefix>-hN, so another prefix that merely starts
# with ours (hvsim2-h1) is never touched.
our_namespaces() {
  ip netns list 2>/dev/null | awk '{print $1}' | grep -E "^$PREFIX-(sw|h[0-9]+)\$" || true
}

# A pid from a pidfile is only ours if that process is alive (not a zombie) and its command line
# mentions $2 (guards against pid reuse after a crash).
pid_is_ours() {
  local pid=$1 needle=$2 stat
  is_uint "$pid" && [[ -r /proc/$pid/cmdline ]] || return 1
  stat=$(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null) || return 1
  [[ $stat != Z ]] && tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -qF -- "$needle"
}

pidfile_pid() { [[ -s $1 ]] && tr -dc 0-9 <"$1"; }

sshd_pid() {  # the pid of hN's listening sshd, or nothing
  local pid
  pid=$(pidfile_pid "$STATE/$1/sshd.pid") || return 1
  pid_is_ours "$pid" "$STATE/$1/sshd_config" && printf '%s' "$pid"
}

uts_pid() {  # the process that holds hN's hostname (UTS namespace), or nothing
  local pid
  pid=$(pidfile_pid "$STATE/$1/uts.pid") || return 1
  pid_is_ours "$pid" "$PREFIX-uts-$1 " && printf '%s' "$pid"
}

# The state directory was made by cluster.sh for this prefix (an empty marker is from an older
# cluster.sh and counts as ours).
state_is_ours() {
  local owner
  [[ -f $STATE/.hvsim-state ]] || return 1
  owner=$(head -n1 "$STATE/.hvsim-state")
  [[ -z $owner || $owner == "$PREFIX" ]]
}

require_up() {
  [[ -f $STATE/hosts ]] && ns_exists "$SW_NS" ||
    die "no cluster is up (state dir $STATE); run: sudo scripts/cluster.sh up N"
}

require_host() {
  state_hosts | grep -qxF -- "$1" ||
    bad_input "unknown host '$1'; hosts are: $(state_hosts | paste -sd' ')"
}

# Serialises up/down/fault: two of them interleaving would leave half-built state.
take_lock() {
  mkdir -p "$(dirname "$LOCK_FILE")"
  exec 9>"$LOCK_FILE"
  flock -w 300 9 || die "another cluster.sh up/down/fault holds $LOCK_FILE"
}

# Retries "$@" up to $1 times, $2 seconds apart.
retry() {
  local tries=$1 delay=$2 i
  shift 2
  for ((i = 1; i <= tries; i++)); do
    "$@" && return 0
    ((i == tries)) || sleep "$delay"
  done
  return 1
}

# --- up: the network ---------------------------------------------------------------------------
make_switch() {
  ip netns add "$SW_NS"
  ip -n "$SW_NS" link add br0 type bridge
  ip -n "$SW_NS" link set br0 up
}

# One host: namespace, a veth pair whose host end (eth0 or --ifname) carries the address and whose
# other end is a port of br0 in the switch namespace. Created with `ip -n` so that no link ever
# appears in the root namespace, not even for a moment.
make_host_net() {
  local i=$1 ifname=$2 mtu=$3 ns
  ns=$(host_ns "h$i")
  ip netns add "$ns"
  ip -n "$ns" link set lo up
  ip -n "$SW_NS" link add "port-h$i" type veth peer name "$ifname" netns "$ns"
  ip -n "$SW_NS" link set "port-h$i" master br0 up
  ip -n "$ns" addr add "$(host_addr "$i")/24" dev "$ifname"
  # Only the host end changes MTU, so a lower value is a real path MTU mismatch: bigger frames
  # from the other hosts are dropped silently on arrival, as on a misconfigured network.
  [[ -z $mtu ]] || ip -n "$ns" link set "$ifname" mtu "$mtu"
  ip -n "$ns" link set "$ifname" up
}

# Docker's bridge: the same 172.17.0.1/16 on every host, so interface auto-detection that picks
# "the interface all hosts share" picks the wrong one. A bridge without ports has no carrier, so it
# gets a veth whose peer stays in the same namespace, like a running container would give it.
make_decoy_bridge() {
  local ns
  ns=$(host_ns "$1")
  ip -n "$ns" link add docker0 type bridge
  ip -n "$ns" addr add 172.17.0.1/16 dev docker0
  ip -n "$ns" link add vethdk0a type veth peer name vethdk0b
  ip -n "$ns" link set vethdk0a master docker0
  ip -n "$ns" link set vethdk0a up
  ip -n "$ns" link set vethdk0b up
  ip -n "$ns" link set docker0 up
}

# A second NIC with a private address unique to the host and nothing behind it.
make_second_if() {
  local i=$1 ns
  ns=$(host_ns "h$i")
  ip -n "$ns" link add eth1 type veth peer name eth1-peer
  ip -n "$ns" addr add "$SECOND_NET.$i.1/24" dev eth1
  ip -n "$ns" link set eth1-peer up
  ip -n "$ns" link set eth1 up
}

# `ip netns exec` bind-mounts /etc/netns/<ns>/hosts over /etc/hosts, so each host resolves the
# others by name without the machine's /etc/hosts ever changing.
write_hosts_file() {
  local i=$1 n=$2 debian=$3 j dir
  dir=/etc/netns/$(host_ns "h$i")
  mkdir -p "$dir"
  {
    printf '%s\n' "$HOSTS_TAG"
    printf '127.0.0.1\tlocalhost\n'
    [[ $debian != 1 ]] || printf '127.0.1.1\th%s\n' "$i"
    for ((j = 1; j <= n; j++)); do printf '%s\th%s\n' "$(host_addr "$j")" "$j"; done
    printf '::1\tlocalhost ip6-localhost ip6-loopback\n'
  } >"$dir/hosts"
  chmod 644 "$dir/hosts"
}

# --- up: ssh -------------------------------------------------------------------------------------
launch_user() {  # who typed the command: with sudo that is $SUDO_USER, not root
  if [[ -n ${SUDO_USER:-} ]] && id -u "$SUDO_USER" >/dev/null 2>&1; then
    printf '%s' "$SUDO_USER"
  else
    id -un
  fi
}

launch_home() { getent passwd "$(launch_user)" | cut -d: -f6; }

make_client_key() {
  ssh-keygen -q -t ed25519 -N '' -C "hvsim-cluster-client" -f "$STATE/id_ed25519"
  # ssh refuses a private key other users can read, and the launching user must be able to read it.
  chown "$(launch_user)" "$STATE/id_ed25519" "$STATE/id_ed25519.pub"
  chmod 600 "$STATE/id_ed25519"
}

write_sshd_config() {
  local i=$1 dir cfg
  dir=$STATE/h$i
  cfg=$dir/sshd_config
  cat >"$cfg" <<EOF
# Generated by scripts/cluster.sh for simulated host h$i; removed by 'cluster.sh down'.
Port 22
ListenAddress $(host_addr "$i")
HostKey $dir/ssh_host_ed25519_key
PidFile $dir/sshd.pid
# Keys only, and only the cluster's key: ~/.ssh/authorized_keys is left alone.
AuthorizedKeysFile $dir/authorized_keys
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitRootLogin prohibit-password
UsePAM no
# The state files are root-owned in /tmp, which strict mode would reject for other users.
StrictModes no
PermitUserEnvironment no
# The preflight and mpirun open many sessions at once; the defaults (10:30:100, 10) refuse some.
MaxStartups 100:30:200
MaxSessions 100
PrintMotd no
X11Forwarding no
# scp uses the sftp protocol since OpenSSH 9.0.
Subsystem sftp internal-sftp
LogLevel INFO
EOF
  # OpenSSH >= 9.8 penalises sources with many failed/aborted connections, which fault tests make
  # on purpose; turn that off where the option exists (it is unknown to older sshd).
  if "$SSHD" -t -f "$cfg" -o PerSourcePenalties=no >/dev/null 2>&1; then
    printf 'PerSourcePenalties no\n' >>"$cfg"
  fi
  "$SSHD" -t -f "$cfg"
}

make_host_ssh() {
  local i=$1 dir
  dir=$STATE/h$i
  mkdir -p "$dir"
  ssh-keygen -q -t ed25519 -N '' -C "h$i" -f "$dir/ssh_host_ed25519_key"
  cp "$STATE/id_ed25519.pub" "$dir/authorized_keys"
  chmod 644 "$dir/authorized_keys"
  write_sshd_config "$i"
  # Listed under the name and the address, so `ssh h2` and `ssh 10.231.0.12` are both verified.
  printf 'h%s,%s %s\n' "$i" "$(host_addr "$i")" "$(cut -d' ' -f1,2 "$dir/ssh_host_ed25519_key.pub")" \
    >>"$STATE/known_hosts"
}

write_ssh_client_config() {
  local n=$1 i hosts=''
  for ((i = 1; i <= n; i++)); do hosts+="h$i,$(host_addr "$i"),"; done
  cat >"$STATE/ssh_config" <<EOF
# Generated by scripts/cluster.sh; included from ~/.ssh/config between the $PREFIX cluster markers.
# Host key checking stays on: these hosts are verified against the generated known_hosts.
# Other clusters (HVSIM_PREFIX) use the same names and addresses, so this applies only on this
# cluster's hosts, recognised by the tag in their /etc/hosts; ssh runs the grep only for these hosts.
Match host ${hosts%,} exec "grep -qsxF '$HOSTS_TAG' /etc/hosts"
    IdentityFile $STATE/id_ed25519
    IdentitiesOnly yes
    UserKnownHostsFile $STATE/known_hosts
    StrictHostKeyChecking yes
    PasswordAuthentication no
    User $(launch_user)
    ConnectTimeout 5
EOF
  chmod 644 "$STATE/ssh_config" "$STATE/known_hosts"
}

# The hostname lives in a UTS namespace held open by a sleeping process (not by sshd), so the host
# keeps its name while its sshd is stopped by a fault, and `exec` works then too. setsid and the
# closed descriptors detach it from the caller (a test's captured stdout would otherwise never
# reach EOF), and fd 9 (the lock) is closed so the lock is released when cluster.sh exits.
start_uts_holder() {
  local h=$1 pidfile=$STATE/$1/uts.pid
  rm -f "$pidfile"
  # shellcheck disable=SC2016  # $1.. expand in the inner bash, on purpose
  setsid ip netns exec "$(host_ns "$h")" unshare --uts \
    bash -c 'hostname "$1" && echo $$ >"$2" && exec -a "$3" sleep infinity' \
    _ "$h" "$pidfile" "$PREFIX-uts-$h" </dev/null >/dev/null 2>&1 9>&- &
  retry 50 0.1 uts_pid "$h" >/dev/null || die "could not start the hostname holder of $h"
}

start_sshd() {
  local h=$1 holder
  holder=$(uts_pid "$h") || die "host $h has no hostname holder; run: sudo scripts/cluster.sh up"
  rm -f "$STATE/$h/sshd.pid"
  # sshd binds its socket before it daemonizes, so once the pidfile exists it accepts connections.
  ip netns exec "$(host_ns "$h")" nsenter -t "$holder" -u -- \
    "$SSHD" -f "$STATE/$h/sshd_config" -E "$STATE/$h/sshd.log" </dev/null >/dev/null 2>&1 9>&-
  retry 50 0.1 sshd_pid "$h" >/dev/null || die "sshd of $h did not start; see $STATE/$h/sshd.log"
}

stop_pid() {  # TERM, then KILL after ~2 s
  local pid=$1
  kill -TERM "$pid" 2>/dev/null || return 0
  retry 20 0.1 pid_gone "$pid" || kill -KILL "$pid" 2>/dev/null || true
}

pid_gone() {
  [[ ! -e /proc/$1 ]] || [[ $(awk '{print $3}' "/proc/$1/stat" 2>/dev/null) == Z ]]
}

stop_sshd() {
  local pid
  pid=$(sshd_pid "$1") || return 0
  stop_pid "$pid"
}

# Logs in to every host from h1 with the cluster's own ssh_config (-F), so a second cluster's block
# in ~/.ssh/config cannot get in the way.
ssh_login_ok() {
  ip netns exec "$(host_ns h1)" ssh -F "$STATE/ssh_config" -o BatchMode=yes -o ConnectTimeout=2 \
    "$1" true </dev/null >/dev/null 2>&1
}

wait_ready() {
  local h
  for h in $(state_hosts); do
    retry 30 0.2 ssh_login_ok "$h" || {
      tail -n 5 "$STATE/$h/sshd.log" >&2 2>/dev/null || true
      die "ssh from h1 to $h does not work (sshd log: $STATE/$h/sshd.log)"
    }
  done
}

# --- ~/.ssh/config block ---------------------------------------------------------------------------
# Rewrites the file through a temporary copy so an interrupted run never leaves half a file, and
# keeps the owner and mode of the original.
rewrite_file() {  # $1 file, $2 temp with the new content
  chmod --reference="$1" "$2" 2>/dev/null || chmod 600 "$2"
  chown --reference="$1" "$2" 2>/dev/null || true
  mv -f "$2" "$1"
}

block_has() {  # block_has LINE FILE: LINE is inside our block (not another prefix's)
  awk -v b="$MARK_BEGIN" -v e="$MARK_END" -v l="$1" \
    '$0 == b {in_b = 1; next} $0 == e {in_b = 0; next} in_b && $0 == l {found = 1} END {exit !found}' "$2"
}

strip_block() {  # prints the file without our block
  awk -v b="$MARK_BEGIN" -v e="$MARK_END" '$0 == b {skip = 1; next} $0 == e {skip = 0; next} !skip' "$1"
}

# Runs "$@" holding the ~/.ssh/config lock (fd 8), so concurrent clusters never lose an edit.
with_ssh_config_lock() {
  mkdir -p "$(dirname "$SSH_CONFIG_LOCK")"
  (
    flock -w 60 8 || die "could not lock $SSH_CONFIG_LOCK"
    "$@"
  ) 8>"$SSH_CONFIG_LOCK"
}

install_ssh_include() {
  local user home dir cfg tmp created_dir='' created_file=''
  user=$(launch_user)
  home=$(launch_home)
  [[ -n $home && -d $home ]] || { warn "no home directory for $user; ssh h1 needs -F $STATE/ssh_config"; return 0; }
  dir=$home/.ssh
  cfg=$(readlink -f "$dir/config" 2>/dev/null || printf '%s' "$dir/config")
  if [[ ! -d $dir ]]; then
    mkdir -m 700 "$dir" && chown "$user" "$dir"
    created_dir=1
  fi
  if [[ ! -e $cfg ]]; then
    install -m 600 -o "$user" /dev/null "$cfg"
    created_file=1
  fi
  # A block left from an earlier run keeps its "created" notes, so the file is still removed later.
  block_has "$MARK_CREATED_FILE" "$cfg" && created_file=1
  block_has "$MARK_CREATED_DIR" "$cfg" && created_dir=1
  tmp=$(mktemp "$cfg.hvsim.XXXXXX")
  {
    printf '%s\n' "$MARK_BEGIN"
    [[ -z $created_file ]] || printf '%s\n' "$MARK_CREATED_FILE"
    [[ -z $created_dir ]] || printf '%s\n' "$MARK_CREATED_DIR"
    printf 'Include %s/ssh_config\n%s\n' "$STATE" "$MARK_END"
    strip_block "$cfg"
  } >"$tmp"
  rewrite_file "$cfg" "$tmp"
}

remove_ssh_include() {  # prints what it removed
  local home dir cfg tmp created_file='' created_dir=''
  home=$(launch_home)
  [[ -n $home ]] || return 0
  dir=$home/.ssh
  cfg=$(readlink -f "$dir/config" 2>/dev/null || printf '%s' "$dir/config")
  [[ -f $cfg ]] && grep -qxF "$MARK_BEGIN" "$cfg" || return 0
  block_has "$MARK_CREATED_FILE" "$cfg" && created_file=1
  block_has "$MARK_CREATED_DIR" "$cfg" && created_dir=1
  tmp=$(mktemp "$cfg.hvsim.XXXXXX")
  strip_block "$cfg" >"$tmp"
  # Another cluster's block still there inherits our "created" notes, so whichever cluster goes
  # down last still removes the file (and directory) that the first one created.
  local notes=()
  [[ -z $created_file ]] || grep -qxF "$MARK_CREATED_FILE" "$tmp" || notes+=("$MARK_CREATED_FILE")
  [[ -z $created_dir ]] || grep -qxF "$MARK_CREATED_DIR" "$tmp" || notes+=("$MARK_CREATED_DIR")
  if [[ ${#notes[@]} -gt 0 ]] && grep -qE "$ANY_MARK_BEGIN_RE" "$tmp"; then
    awk -v re="$ANY_MARK_BEGIN_RE" -v notes="$(printf '%s\n' "${notes[@]}")" \
      '{print} !done && $0 ~ re {print notes; done = 1}' "$tmp" >"$tmp.2"
    mv -f "$tmp.2" "$tmp"
  fi
  rewrite_file "$cfg" "$tmp"
  echo "removed the $PREFIX block from $cfg"
  if [[ -n $created_file && ! -s $cfg ]]; then
    rm -f "$cfg"
    [[ -z $created_dir ]] || rmdir "$dir" 2>/dev/null || true
  fi
}

# --- down ----------------------------------------------------------------------------------------
# Kills by pidfile first (the sshds and hostname holders), then everything else left in each
# namespace (ssh sessions, orted, test listeners), then deletes the namespaces. A namespace is only
# really gone when no process is left in it, hence the kill before the delete.
kill_namespace_procs() {
  local ns pid pids=()
  for ns in "$@"; do
    for pid in $(ip netns pids "$ns" 2>/dev/null); do pids+=("$pid"); done
  done
  [[ ${#pids[@]} -gt 0 ]] || return 0
  kill -TERM "${pids[@]}" 2>/dev/null || true
  for pid in "${pids[@]}"; do
    retry 20 0.1 pid_gone "$pid" || kill -KILL "$pid" 2>/dev/null || true
  done
}

teardown() {  # prints one line per thing removed
  local ns pidfile pid d h
  local -a namespaces
  mapfile -t namespaces < <(our_namespaces)
  for pidfile in "$STATE"/h*/sshd.pid "$STATE"/h*/uts.pid; do
    [[ -f $pidfile ]] || continue
    h=$(basename "$(dirname "$pidfile")")
    pid=$(pidfile_pid "$pidfile") || continue
    if pid_is_ours "$pid" "$STATE/$h/sshd_config" || pid_is_ours "$pid" "$PREFIX-uts-$h "; then
      stop_pid "$pid"
      echo "stopped $(basename "$pidfile" .pid) of $h (pid $pid)"
    fi
  done
  if [[ ${#namespaces[@]} -gt 0 ]]; then
    kill_namespace_procs "${namespaces[@]}"
    for ns in "${namespaces[@]}"; do
      ip netns del "$ns" && echo "deleted namespace $ns"
    done
  fi
  for d in /etc/netns/"$PREFIX"-*; do
    [[ -d $d && $(basename "$d") =~ ^$PREFIX-(sw|h[0-9]+)$ ]] || continue
    rm -rf "$d" && echo "removed $d"
  done
  with_ssh_config_lock remove_ssh_include
  # Only a directory this script made for this prefix (it has the marker) is deleted wholesale.
  if state_is_ours; then
    rm -rf "$STATE" && echo "removed $STATE"
  fi
}

cmd_down() {
  [[ $# -eq 0 ]] || bad_input "down takes no arguments (got '$*')"
  need_root
  check_env
  take_lock
  local out
  out=$(teardown)
  if [[ -z $out ]]; then
    say "nothing to remove"
  else
    printf '%s\n' "$out"
    say "cluster down"
  fi
}

# --- up ------------------------------------------------------------------------------------------
# Globals filled by parse_up_args.
N=$DEFAULT_HOSTS
DECOY=() SECOND=() DEBIAN=()
declare -A MTU=() IFNAME=()

parse_up_args() {
  local decoy='' second='' debian='' mtu='' ifname='' opt val idx value
  if [[ $# -gt 0 && $1 != -* ]]; then
    is_uint "$1" && ((10#$1 >= 1 && 10#$1 <= MAX_HOSTS)) ||
      bad_input "host count '$1' is not a whole number from 1 to $MAX_HOSTS; run e.g.: scripts/cluster.sh up 3"
    N=$((10#$1))
    shift
  fi
  while [[ $# -gt 0 ]]; do
    opt=$1
    case $opt in
      --*=*) val=${opt#*=} opt=${opt%%=*} ;;
      --decoy-bridge | --second-if | --debian-hosts | --mtu | --ifname)
        [[ $# -ge 2 ]] || bad_input "$opt needs a value; see scripts/cluster.sh --help"
        val=$2
        shift ;;
      *) bad_input "unknown option '$opt' for up; see scripts/cluster.sh --help" ;;
    esac
    shift
    case $opt in
      --decoy-bridge) decoy=$val ;;
      --second-if) second=$val ;;
      --debian-hosts) debian=$val ;;
      --mtu) mtu=$val ;;
      --ifname) ifname=$val ;;
      *) bad_input "unknown option '$opt' for up; see scripts/cluster.sh --help" ;;
    esac
  done
  # Validate in this shell first: bad input inside the process substitutions below would only
  # end the substitution, not the script.
  [[ -z $decoy ]] || parse_host_list "$decoy" "$N" --decoy-bridge >/dev/null
  [[ -z $second ]] || parse_host_list "$second" "$N" --second-if >/dev/null
  [[ -z $debian ]] || parse_host_list "$debian" "$N" --debian-hosts >/dev/null
  [[ -z $decoy ]] || mapfile -t DECOY < <(parse_host_list "$decoy" "$N" --decoy-bridge)
  [[ -z $second ]] || mapfile -t SECOND < <(parse_host_list "$second" "$N" --second-if)
  [[ -z $debian ]] || mapfile -t DEBIAN < <(parse_host_list "$debian" "$N" --debian-hosts)
  if [[ -n $mtu ]]; then
    parse_host_map "$mtu" "$N" --mtu '^[0-9]+$' MTU >/dev/null
    while read -r idx value; do check_mtu "$value"; MTU[$idx]=$value; done \
      < <(parse_host_map "$mtu" "$N" --mtu '^[0-9]+$' MTU)
  fi
  if [[ -n $ifname ]]; then
    local name_re='^[A-Za-z][A-Za-z0-9_.-]{0,14}$'
    parse_host_map "$ifname" "$N" --ifname "$name_re" NAME >/dev/null
    while read -r idx value; do
      case $value in
        lo | docker0 | eth1 | eth1-peer | vethdk0a | vethdk0b)
          bad_input "--ifname: '$value' is taken by the simulation; pick another name such as ens5" ;;
      esac
      IFNAME[$idx]=$value
    done < <(parse_host_map "$ifname" "$N" --ifname "$name_re" NAME)
  fi
}

in_list() {  # in_list h2 "${LIST[@]}"
  local x=$1 y
  shift
  for y in "$@"; do [[ $x == "$y" ]] && return 0; done
  return 1
}

# The canonical description of the requested cluster; 'up' compares it with the recorded one.
desired_config() {
  local i mtu='' ifn=''
  for ((i = 1; i <= N; i++)); do
    [[ -z ${MTU[$i]:-} ]] || mtu+="h$i=${MTU[$i]},"
    [[ -z ${IFNAME[$i]:-} ]] || ifn+="h$i=${IFNAME[$i]},"
  done
  printf 'prefix=%s hosts=%s decoy-bridge=%s second-if=%s debian-hosts=%s mtu=%s ifname=%s\n' \
    "$PREFIX" "$N" "$(IFS=,; echo "${DECOY[*]}")" "$(IFS=,; echo "${SECOND[*]}")" \
    "$(IFS=,; echo "${DEBIAN[*]}")" "${mtu%,}" "${ifn%,}"
}

cluster_healthy() {  # every namespace, hostname holder and sshd of the recorded cluster is there
  local h
  [[ -f $STATE/hosts ]] && ns_exists "$SW_NS" || return 1
  for h in $(state_hosts); do
    ns_exists "$(host_ns "$h")" && uts_pid "$h" >/dev/null && sshd_pid "$h" >/dev/null || return 1
  done
}

build_cluster() {
  local i h ifname
  mkdir -p "$STATE"
  chmod 755 "$STATE"
  echo "$PREFIX" >"$STATE/.hvsim-state"   # marks the directory as ours, so 'down' may delete it
  mkdir -p "$STATE/faults"
  mkdir -p /run/sshd   # sshd's privilege separation directory (-p: other clusters race for it)
  make_client_key
  make_switch
  for ((i = 1; i <= N; i++)); do
    h=h$i
    ifname=${IFNAME[$i]:-eth0}
    make_host_net "$i" "$ifname" "${MTU[$i]:-}"
    ! in_list "$h" "${DECOY[@]}" || make_decoy_bridge "$h"
    ! in_list "$h" "${SECOND[@]}" || make_second_if "$i"
    write_hosts_file "$i" "$N" "$(in_list "$h" "${DEBIAN[@]}" && echo 1 || echo 0)"
    make_host_ssh "$i"
  done
  write_ssh_client_config "$N"
  : >"$STATE/hosts.tmp"
  for ((i = 1; i <= N; i++)); do
    printf 'h%s %s %s\n' "$i" "$(host_addr "$i")" "${IFNAME[$i]:-eth0}" >>"$STATE/hosts.tmp"
  done
  mv "$STATE/hosts.tmp" "$STATE/hosts"
  for ((i = 1; i <= N; i++)); do
    start_uts_holder "h$i"
    start_sshd "h$i"
  done
  with_ssh_config_lock install_ssh_include
  wait_ready
  desired_config >"$STATE/config"
}

print_table() {
  local h ns addr ifn sshd extras k
  printf '%-5s %-12s %-10s %-14s %-14s %s\n' HOST NAMESPACE INTERFACE ADDRESS SSHD EXTRAS
  for h in $(state_hosts); do
    ns=$(host_ns "$h")
    addr=$(host_address "$h")
    ifn=$(host_ifname "$h")
    if k=$(sshd_pid "$h"); then sshd="up (pid $k)"; else sshd=down; fi
    extras=$(ip -n "$ns" -br link 2>/dev/null | awk '$1 ~ /^(docker0|eth1)(@|$)/ {sub(/@.*/, "", $1); printf "%s ", $1}')
    k=$(ip -n "$ns" link show "$ifn" 2>/dev/null | grep -o 'mtu [0-9]*' | head -n1 || true)
    [[ $k == "mtu 1500" || -z $k ]] || extras+="$k "
    ! grep -q '^127\.0\.1\.1[[:space:]]' "/etc/netns/$ns/hosts" 2>/dev/null || extras+="127.0.1.1-in-hosts"
    printf '%-5s %-12s %-10s %-14s %-14s %s\n' "$h" "$ns" "$ifn" "$addr" "$sshd" "${extras:--}"
  done
}

on_up_exit() {
  local rc=$?
  trap - EXIT
  if [[ $rc -ne 0 ]]; then
    warn "up failed; removing what was built"
    teardown >/dev/null 2>&1 || true
  fi
  exit "$rc"
}

cmd_up() {
  parse_up_args "$@"
  need_root
  check_env
  take_lock
  local want
  want=$(desired_config)
  if [[ -f $STATE/config && $(cat "$STATE/config") == "$want" ]] && cluster_healthy; then
    # With a fault on (a link down, say) logins may fail on purpose; then alive sshds suffice.
    [[ -n $(print_faults) ]] || wait_ready
    say "cluster already up ($N hosts, same options); every sshd is alive"
    print_table
    print_faults
    return 0
  fi
  if [[ -d $STATE && -n $(ls -A "$STATE") ]] && ! state_is_ours; then
    die "$STATE exists and is not this cluster's ($PREFIX) state; remove it or set HVSIM_DIR to another path"
  fi
  if [[ -n $(our_namespaces) || -e $STATE || -n $(ls -d /etc/netns/"$PREFIX"-* 2>/dev/null) ]]; then
    say "an earlier or different cluster is there; tearing it down first"
    teardown >/dev/null
  fi
  # If anything below fails (or we are interrupted), remove what was built so far.
  trap on_up_exit EXIT
  trap 'exit 130' INT TERM
  say "building $N hosts in namespaces $PREFIX-h1..$PREFIX-h$N (state in $STATE)"
  build_cluster
  trap - EXIT INT TERM
  say "cluster up: ssh from h1 to every host works (try: sudo scripts/cluster.sh exec h1 ssh h2 hostname)"
  print_table
}

# --- status / hosts ------------------------------------------------------------------------------
print_faults() {
  local f base value
  for f in "$STATE"/faults/*; do
    [[ -f $f ]] || continue
    base=$(basename "$f")
    value=$(tr -d '\n' <"$f")
    printf 'fault: %s %s on%s\n' "${base%%.*}" "${base#*.}" "${value:+ ($value)}"
  done
}

cmd_status() {
  [[ $# -eq 0 ]] || bad_input "status takes no arguments (got '$*')"
  check_env
  require_up
  say "cluster up: $(cat "$STATE/config" 2>/dev/null || echo '(config missing)')"
  print_table
  local faults
  faults=$(print_faults)
  if [[ -n $faults ]]; then printf '%s\n' "$faults"; else echo "faults: none"; fi
}

cmd_hosts() {
  [[ $# -eq 0 ]] || bad_input "hosts takes no arguments (got '$*')"
  check_env
  require_up
  state_hosts
}

# --- exec ----------------------------------------------------------------------------------------
cmd_exec() {
  [[ $# -ge 2 ]] || bad_input "exec needs a host and a command: scripts/cluster.sh exec h1 hostname"
  local h=$1 holder
  shift
  need_root
  check_env
  require_up
  require_host "$h"
  holder=$(uts_pid "$h") || die "host $h is not running (its hostname holder is gone); run: sudo scripts/cluster.sh up"
  # ip netns exec and nsenter both exec (no fork), so stdin/stdout pass through and the exit
  # status is CMD's. The arguments stay an argv array, never a shell string.
  exec ip netns exec "$(host_ns "$h")" nsenter -t "$holder" -u -- "$@"
}

# --- fault ---------------------------------------------------------------------------------------
record_fault() {  # $1 host, $2 kind, $3 on|off, $4 value
  mkdir -p "$STATE/faults"
  if [[ $3 == on ]]; then printf '%s\n' "$4" >"$STATE/faults/$1.$2"; else rm -f "$STATE/faults/$1.$2"; fi
}

# Deletes every INPUT rule carrying our comment, whatever its other parameters were.
delete_tagged_rules() {
  local ns=$1 tag=$2 rule
  local -a words
  while IFS= read -r rule; do
    read -ra words <<<"$rule"
    words[0]=-D
    ip netns exec "$ns" iptables "${words[@]}"
  done < <(ip netns exec "$ns" iptables -S INPUT | grep -E -- "--comment \"?$tag\"?( |\$)" || true)
}

fault_link() {
  ip -n "$1" link set "$2" "$([[ $3 == on ]] && echo down || echo up)"
}

fault_loss() {
  local ns=$1 state=$2 pct=$3 prob
  [[ $pct =~ ^[0-9]+(\.[0-9]+)?$ ]] && awk -v p="$pct" 'BEGIN {exit !(p > 0 && p <= 100)}' ||
    bad_input "loss percent '$pct' is not a number in (0, 100]"
  delete_tagged_rules "$ns" hvsim-loss
  [[ $state == on ]] || return 0
  prob=$(awk -v p="$pct" 'BEGIN {printf "%.4f", p / 100}')
  # Not on lo: a lossy NIC does not make a host lose packets to itself.
  ip netns exec "$ns" iptables -A INPUT ! -i lo -m statistic --mode random --probability "$prob" \
    -m comment --comment hvsim-loss -j DROP
}

fault_delay() {
  local ns=$1 ifn=$2 state=$3 ms=$4 err
  is_uint "$ms" && ((ms >= 1)) || bad_input "delay '$ms' is not a whole number of milliseconds >= 1"
  if [[ $state == off ]]; then
    tc -n "$ns" qdisc del dev "$ifn" root 2>/dev/null || true
    return 0
  fi
  if ! err=$(tc -n "$ns" qdisc replace dev "$ifn" root netem delay "${ms}ms" 2>&1); then
    if [[ $err == *"unknown"* || $err == *"No such file"* || $err == *"not supported"* ]]; then
      printf '%s: this kernel has no netem qdisc (sch_netem); delay cannot be simulated\n' "$PROG" >&2
      exit 3
    fi
    die "tc could not add netem delay on $ifn: $err"
  fi
}

fault_sshd() {
  if [[ $2 == on ]]; then stop_sshd "$1"; elif ! sshd_pid "$1" >/dev/null; then start_sshd "$1"; fi
}

fault_firewall() {
  local ns=$1 state=$2
  local -a rule=(INPUT ! -i lo -p tcp --syn --dport 1024:65535 -m comment --comment hvsim-firewall -j DROP)
  if [[ $state == off ]]; then
    delete_tagged_rules "$ns" hvsim-firewall
  elif ! ip netns exec "$ns" iptables -C "${rule[@]}" 2>/dev/null; then
    # Loopback is spared, as host firewalls (ufw, firewalld) do; only other hosts are blocked.
    ip netns exec "$ns" iptables -A "${rule[@]}"
  fi
}

# Rewrites the host's /etc/hosts in place (same inode): sshd and its sessions see /etc/hosts through
# a bind mount of this very file, which a rename would leave pointing at the old content.
fault_debian_hosts() {
  local h=$1 state=$2 file tmp
  file=/etc/netns/$(host_ns "$h")/hosts
  [[ -f $file ]] || die "$file is missing; run: sudo scripts/cluster.sh up"
  tmp=$(mktemp)
  awk -v h="$h" -v on="$state" '
    $1 == "127.0.1.1" {next}
    {print}
    $1 == "127.0.0.1" && $2 == "localhost" && on == "on" {printf "127.0.1.1\t%s\n", h}' \
    "$file" >"$tmp"
  cat "$tmp" >"$file"
  rm -f "$tmp"
}

fault_mtu() {
  local mtu=$3
  [[ $2 == on ]] || mtu=1500
  check_mtu "$mtu"
  ip -n "$1" link set "$4" mtu "$mtu"
}

cmd_fault() {
  [[ $# -ge 3 && $# -le 4 ]] ||
    bad_input "fault needs HOST KIND on|off [VALUE], e.g.: scripts/cluster.sh fault h2 firewall on"
  local h=$1 kind=$2 state=$3 value=${4:-} ns ifn
  [[ " $FAULT_KINDS " == *" $kind "* ]] || bad_input "unknown fault kind '$kind'; kinds are: $FAULT_KINDS"
  [[ $state == on || $state == off ]] || bad_input "fault state must be 'on' or 'off', not '$state'"
  need_root
  check_env
  require_up
  require_host "$h"
  take_lock
  ns=$(host_ns "$h")
  ifn=$(host_ifname "$h")
  case $kind in
    link) fault_link "$ns" "$ifn" "$state" ;;
    loss) value=${value:-30}; fault_loss "$ns" "$state" "$value" ;;
    delay) value=${value:-100}; fault_delay "$ns" "$ifn" "$state" "$value" ;;
    sshd) fault_sshd "$h" "$state" ;;
    firewall) fault_firewall "$ns" "$state" ;;
    mtu) value=${value:-1400}; fault_mtu "$ns" "$state" "$value" "$ifn" ;;
    debian-hosts) fault_debian_hosts "$h" "$state" ;;
  esac
  record_fault "$h" "$kind" "$state" "$value"
  [[ $state == on ]] || value=''
  say "$h: fault $kind $state${value:+ ($value)}"
}

# --- main ----------------------------------------------------------------------------------------
main() {
  [[ $# -gt 0 ]] || { usage >&2; exit 2; }
  local cmd=$1
  shift
  case $cmd in
    up) cmd_up "$@" ;;
    down) cmd_down "$@" ;;
    status) cmd_status "$@" ;;
    hosts) cmd_hosts "$@" ;;
    exec) cmd_exec "$@" ;;
    fault) cmd_fault "$@" ;;
    -h | --help | help) usage ;;
    *) bad_input "unknown command '$cmd'; commands are up, down, status, hosts, exec, fault (see --help)" ;;
  esac
}

main "$@"
