#!/usr/bin/env bash
# Install produce-sorter on a Raspberry Pi (Raspberry Pi OS Bookworm, 64-bit).
#
#   sudo deploy/install.sh              install or upgrade (safe to run again)
#   deploy/install.sh --dry-run         print every step, change nothing (no root needed)
#
# What it does, in order:
#   1. checks the OS: 64-bit (aarch64) only; Bookworm expected
#   2. apt packages: python3-venv, python3-picamera2 (libcamera's Python bindings come only
#      from Raspberry Pi OS), libopenblas0, v4l-utils
#   3. a system user (default `sorter`) in the video and dialout groups
#   4. a venv in PREFIX/venv made with --system-site-packages (so picamera2 is visible), the
#      project installed into it WITHOUT TensorFlow (base install, no [train] extra), and a
#      numpy-2 build of simplejpeg (the apt one is built for numpy 1 and breaks picamera2)
#   5. /etc/produce-sorter/sorter.toml from deploy/sorter.example.toml if absent (never
#      overwritten), with a fresh dashboard token; the model in PREFIX/models/
#   6. the systemd unit and the udev rule installed, reloaded and enabled
# See deploy/README.md for the whole procedure.
set -euo pipefail

PROG=$(basename "$0")
SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
SOURCE_DIR=$(cd "$SCRIPT_DIR/.." && pwd)

PREFIX=/opt/produce-sorter
CONFIG_DIR=/etc/produce-sorter
STATE_DIR=/var/lib/produce-sorter
LOG_DIR=/var/log/produce-sorter
SERVICE_USER=sorter
MODEL=""
DRY_RUN=0
DO_APT=1
DO_ENABLE=1
UNIT_DIR=/etc/systemd/system
UDEV_DIR=/etc/udev/rules.d
APT_PACKAGES=(python3-venv python3-pip python3-picamera2 libopenblas0 v4l-utils)

usage() {
    cat <<USAGE
usage: $PROG [--dry-run] [--prefix DIR] [--user NAME] [--model FILE.tflite] [--source DIR]
             [--no-apt] [--no-enable]

Install produce-sorter on Raspberry Pi OS Bookworm (64-bit). Safe to run again.

  --dry-run        print what would be done and change nothing (no root needed)
  --prefix DIR     install directory (default $PREFIX; the venv is DIR/venv)
  --user NAME      system user the service runs as (default $SERVICE_USER)
  --model FILE     model to install (default: the bundled models/*.tflite of the checkout)
  --source DIR     project checkout to install from (default $SOURCE_DIR)
  --no-apt         skip apt-get (packages already installed)
  --no-enable      install the unit but do not enable/start it
USAGE
}

die() {
    echo "error: $*" >&2
    exit 2
}
say() { echo "==> $*"; }

# Print a command in a form that can be pasted into a shell, then run it (unless dry run).
run() {
    printf '+'
    printf ' %q' "$@"
    printf '\n'
    if [[ $DRY_RUN -eq 0 ]]; then
        "$@"
    fi
}

# Write stdin to a file (mode, owner) only if its content differs; print it in a dry run.
install_content() {
    local dest=$1 mode=$2 owner=$3 tmp
    tmp=$(mktemp)
    cat >"$tmp"
    if [[ -f $dest ]] && cmp -s "$tmp" "$dest"; then
        echo "  unchanged: $dest"
        rm -f "$tmp"
        return 0
    fi
    echo "+ install -m $mode -o ${owner%%:*} -g ${owner##*:} <generated> $dest"
    if [[ $DRY_RUN -eq 1 ]]; then
        sed 's/^/  | /' "$tmp"
        rm -f "$tmp"
        return 0
    fi
    install -m "$mode" -o "${owner%%:*}" -g "${owner##*:}" "$tmp" "$dest"
    rm -f "$tmp"
}

parse_args() {
    while [[ $# -gt 0 ]]; do
        case $1 in
        --dry-run) DRY_RUN=1 ;;
        --prefix)
            [[ $# -ge 2 ]] || die "--prefix needs a directory"
            PREFIX=$2
            shift
            ;;
        --user)
            [[ $# -ge 2 ]] || die "--user needs a name"
            SERVICE_USER=$2
            shift
            ;;
        --model)
            [[ $# -ge 2 ]] || die "--model needs a .tflite file"
            MODEL=$2
            shift
            ;;
        --source)
            [[ $# -ge 2 ]] || die "--source needs the project checkout directory"
            SOURCE_DIR=$(cd "$2" && pwd) || die "--source $2: no such directory"
            shift
            ;;
        --no-apt) DO_APT=0 ;;
        --no-enable) DO_ENABLE=0 ;;
        -h | --help)
            usage
            exit 0
            ;;
        *) die "unknown option '$1' (see $PROG --help)" ;;
        esac
        shift
    done
}

check_platform() {
    local machine bits codename="unknown" model="not a Raspberry Pi"
    # SORTER_INSTALL_MACHINE lets the tests play a 32-bit Pi; nobody else needs it.
    machine=${SORTER_INSTALL_MACHINE:-$(uname -m)}
    bits=$(getconf LONG_BIT 2>/dev/null || echo 64)
    [[ -n ${SORTER_INSTALL_MACHINE:-} ]] && bits=""
    case $machine in
    armv6l | armv7l | armhf | arm | i386 | i686)
        die "32-bit OS detected ($machine): numpy, ai-edge-litert and opencv publish no 32-bit Arm wheels. Flash Raspberry Pi OS (64-bit) Bookworm and run this again."
        ;;
    esac
    if [[ $bits == 32 ]]; then
        die "32-bit userland on a 64-bit kernel ($machine, LONG_BIT=32): there are no 32-bit Arm wheels for numpy/ai-edge-litert/opencv. Flash Raspberry Pi OS (64-bit) Bookworm and run this again."
    fi
    if [[ -r /etc/os-release ]]; then
        # shellcheck disable=SC1091
        codename=$(. /etc/os-release && echo "${VERSION_CODENAME:-unknown}")
    fi
    if [[ -r /proc/device-tree/model ]]; then
        model=$(tr -d '\0' </proc/device-tree/model)
    fi
    say "platform: $machine, OS codename $codename, $model"
    if [[ $machine != aarch64 ]]; then
        echo "warning: this is not a 64-bit Raspberry Pi ($machine); continuing, but the camera needs a Pi" >&2
    fi
    if [[ $codename != bookworm ]]; then
        echo "warning: written for Raspberry Pi OS Bookworm, this is '$codename'" >&2
    fi
    if [[ $DRY_RUN -eq 0 && $(id -u) -ne 0 ]]; then
        die "must run as root to install (try: sudo $0 $*), or use --dry-run to see the plan"
    fi
}

find_model() {
    if [[ -z $MODEL ]]; then
        # The bundled default model (sorter.grading.classifier looks for this name), else any .tflite.
        local candidates=("$SOURCE_DIR/models/cucumber9-int8.tflite" "$SOURCE_DIR"/models/*.tflite)
        local candidate
        for candidate in "${candidates[@]}"; do
            if [[ -f $candidate ]]; then
                MODEL=$candidate
                break
            fi
        done
    fi
    if [[ -n $MODEL && ! -f $MODEL ]]; then
        die "--model $MODEL: no such file (give the exported .tflite from sorter-export)"
    fi
}

step_apt() {
    say "apt packages: ${APT_PACKAGES[*]}"
    if [[ $DO_APT -eq 0 ]]; then
        echo "  skipped (--no-apt)"
        return 0
    fi
    local missing=() pkg
    for pkg in "${APT_PACKAGES[@]}"; do
        if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed"; then
            missing+=("$pkg")
        fi
    done
    if [[ ${#missing[@]} -eq 0 ]]; then
        echo "  all installed"
        return 0
    fi
    run apt-get update
    run env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${missing[@]}"
}

step_user() {
    say "system user $SERVICE_USER in groups video, dialout"
    if id -u "$SERVICE_USER" >/dev/null 2>&1; then
        echo "  user exists"
    else
        run useradd --system --home-dir "$STATE_DIR" --no-create-home \
            --shell /usr/sbin/nologin --user-group "$SERVICE_USER"
    fi
    run usermod -a -G video,dialout "$SERVICE_USER"
}

step_venv() {
    local venv=$PREFIX/venv
    say "venv $venv (--system-site-packages, so Raspberry Pi OS's picamera2 is visible)"
    run install -d -m 0755 "$PREFIX"
    if [[ -x $venv/bin/python ]]; then
        echo "  venv exists"
    else
        run python3 -m venv --system-site-packages "$venv"
    fi
    run "$venv/bin/pip" install --quiet --upgrade pip
    # Base install only: no [train] extra, so TensorFlow never lands on the Pi.
    run "$venv/bin/pip" install --quiet --upgrade "$SOURCE_DIR"
    # The apt simplejpeg is built against numpy 1; picamera2 imports it and fails with
    # "numpy.dtype size changed" under the venv's numpy 2. A wheel built for numpy 2 fixes it.
    run "$venv/bin/pip" install --quiet --upgrade "simplejpeg>=1.8"
    run "$venv/bin/python" -c "import numpy, cv2, ai_edge_litert, serial, sorter; print('imports ok')"
}

step_dirs() {
    say "state and log directories"
    run install -d -m 0755 -o root -g root "$CONFIG_DIR"
    run install -d -m 0750 -o "$SERVICE_USER" -g "$SERVICE_USER" "$STATE_DIR" "$STATE_DIR/crops" "$LOG_DIR"
    run install -d -m 0755 "$PREFIX/models"
    # The unit's Documentation= points here.
    run install -m 0644 "$SCRIPT_DIR/README.md" "$PREFIX/README.md"
}

step_model() {
    say "model"
    if [[ -z $MODEL ]]; then
        echo "warning: no model given and none bundled in $SOURCE_DIR/models; the classifier will look in its default places" >&2
        return 0
    fi
    local dest
    dest=$PREFIX/models/$(basename "$MODEL")
    if [[ -f $dest ]] && cmp -s "$MODEL" "$dest"; then
        echo "  unchanged: $dest"
    else
        run install -m 0644 "$MODEL" "$dest"
    fi
    # The model's metadata sidecar travels with it when there is one.
    if [[ -f ${MODEL%.tflite}.json ]]; then
        run install -m 0644 "${MODEL%.tflite}.json" "${dest%.tflite}.json"
    fi
}

step_config() {
    local config=$CONFIG_DIR/sorter.toml example=$SOURCE_DIR/deploy/sorter.example.toml token
    say "config $config"
    if [[ -f $config ]]; then
        echo "  exists, left as it is (never overwritten); check it with: sorter config check $config"
        return 0
    fi
    [[ -f $example ]] || die "$example missing: the checkout is incomplete (run 'sorter config init $example')"
    token=$(head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n')
    local model_path=""
    if [[ -n $MODEL ]]; then
        model_path=$PREFIX/models/$(basename "$MODEL")
    fi
    # Fill in what only the installer knows: the dashboard token (so binding off localhost is
    # safe) and the installed model's path, each only where the example leaves it empty ("").
    awk -v token="$token" -v model="$model_path" '
        /^\[/ { section = $0 }
        section == "[dashboard]" && /^[[:space:]]*token[[:space:]]*=[[:space:]]*""/ {
            sub(/""/, "\"" token "\"")
        }
        section == "[model]" && model != "" && /^[[:space:]]*path[[:space:]]*=[[:space:]]*""/ {
            sub(/""/, "\"" model "\"")
        }
        { print }
    ' "$example" | install_content "$config" 0640 "root:$SERVICE_USER"
}

step_systemd() {
    local unit=produce-sorter.service
    say "systemd unit $UNIT_DIR/$unit and udev rule $UDEV_DIR/99-sorter-controller.rules"
    sed -e "s|/opt/produce-sorter|$PREFIX|g" -e "s|^User=sorter$|User=$SERVICE_USER|" \
        -e "s|^Group=sorter$|Group=$SERVICE_USER|" "$SCRIPT_DIR/$unit" |
        install_content "$UNIT_DIR/$unit" 0644 root:root
    install_content "$UDEV_DIR/99-sorter-controller.rules" 0644 root:root \
        <"$SCRIPT_DIR/99-sorter-controller.rules"
    # systemd >= 254 (Trixie) can grow the restart delay; Bookworm's 252 does not know the keys.
    local version
    version=$(systemctl --version 2>/dev/null | awk 'NR == 1 { print $2 }')
    if [[ ${version:-0} =~ ^[0-9]+$ && ${version:-0} -ge 254 ]]; then
        run install -d -m 0755 "$UNIT_DIR/$unit.d"
        printf '[Service]\nRestartSteps=5\nRestartMaxDelaySec=60s\n' |
            install_content "$UNIT_DIR/$unit.d/restart-backoff.conf" 0644 root:root
    else
        echo "  systemd ${version:-unknown} < 254: fixed RestartSec backoff (no RestartSteps)"
    fi
    run udevadm control --reload-rules
    run udevadm trigger --subsystem-match=tty --action=add
    run systemctl daemon-reload
    if [[ $DO_ENABLE -eq 1 ]]; then
        run systemctl enable "$unit"
        run systemctl restart "$unit"
    else
        echo "  not enabled (--no-enable); start with: systemctl enable --now $unit"
    fi
}

main() {
    parse_args "$@"
    if [[ $DRY_RUN -eq 1 ]]; then
        say "dry run: printing the plan, changing nothing"
    fi
    check_platform "$@"
    find_model
    step_apt
    step_user
    step_venv
    step_dirs
    step_model
    step_config
    step_systemd
    say "done. Next: sudo -u $SERVICE_USER $PREFIX/venv/bin/sorter doctor --config $CONFIG_DIR/sorter.toml"
    if [[ $DRY_RUN -eq 1 ]]; then
        say "dry run complete: nothing was changed"
    fi
}

main "$@"
