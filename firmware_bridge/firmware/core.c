#include "core.h"

/* ---- little-endian helpers ------------------------------------------------------------ */

static void put_u16(uint8_t *p, uint16_t v)
{
    p[0] = (uint8_t)(v & 0xFFu);
    p[1] = (uint8_t)(v >> 8);
}

static void put_u32(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)(v & 0xFFu);
    p[1] = (uint8_t)((v >> 8) & 0xFFu);
    p[2] = (uint8_t)((v >> 16) & 0xFFu);
    p[3] = (uint8_t)(v >> 24);
}

static uint16_t get_u16(const uint8_t *p)
{
    return (uint16_t)(p[0] | ((uint16_t)p[1] << 8));
}

static uint32_t get_u32(const uint8_t *p)
{
    return (uint32_t)p[0] | ((uint32_t)p[1] << 8) | ((uint32_t)p[2] << 16) |
           ((uint32_t)p[3] << 24);
}

static uint16_t sat_inc(uint16_t v)
{
    return v == 0xFFFFu ? v : (uint16_t)(v + 1u);
}

/* ---- sending ---------------------------------------------------------------------------- */

static void send_msg(core_t *c, uint8_t type, const uint8_t *payload, uint8_t len)
{
    uint8_t wire[MAX_FRAME];
    uint8_t n = frame_build(type, c->tx_seq, payload, len, wire);
    c->tx_seq++;
    if (n != 0) {
        c->hal->send(c->hal->user, wire, n);
    }
}

static void send_answer(core_t *c, uint16_t seq, uint8_t type, uint8_t nak)
{
    uint8_t p[4];
    put_u16(p, seq);
    p[2] = type;
    if (nak == 0) {
        send_msg(c, MSG_ACK, p, 3);
    } else {
        p[3] = nak;
        send_msg(c, MSG_NAK, p, 4);
    }
}

static uint8_t flags(const core_t *c)
{
    uint8_t f = 0;
    if (c->has_encoder) {
        f |= FLAG_ENCODER;
    }
    if (c->configured) {
        f |= FLAG_CONFIGURED;
    }
    if (c->safe) {
        f |= FLAG_SAFE;
    }
    if (c->run) {
        f |= FLAG_RUN;
    }
    return f;
}

static void send_status(core_t *c)
{
    uint8_t p[20];
    put_u32(p, c->now);
    put_u32(p + 4, (uint32_t)c->position);
    p[8] = c->queue_len;
    p[9] = flags(c);
    put_u16(p + 10, c->crc_errors);
    put_u16(p + 12, c->frame_errors);
    put_u16(p + 14, c->fired);
    put_u16(p + 16, c->late);
    send_msg(c, MSG_STATUS, p, 18);
    c->last_status = c->now;
}

static void send_safe_state(core_t *c, uint8_t entered, uint8_t reason, uint8_t dropped)
{
    uint8_t p[3] = {entered, reason, dropped};
    send_msg(c, MSG_SAFE_STATE, p, 3);
}

void core_fault(core_t *c, uint8_t code, uint16_t detail)
{
    uint8_t p[3];
    p[0] = code;
    put_u16(p + 1, detail);
    send_msg(c, MSG_FAULT, p, 3);
}

/* ---- fates, dedup window ---------------------------------------------------------------- */

static void record_fate(core_t *c, uint32_t item, uint16_t epoch, uint8_t fate)
{
    fate_t *f = &c->fates[c->fates_next];
    f->item = item;
    f->epoch = epoch;
    f->fate = fate;
    f->time = c->now;
    c->fates_next = (uint8_t)((c->fates_next + 1u) % FATES_SIZE);
    if (c->fates_count < FATES_SIZE) {
        c->fates_count++;
    }
}

static const fate_t *find_fate(const core_t *c, uint32_t item, uint16_t epoch)
{
    for (uint8_t i = 1; i <= c->fates_count; i++) {
        uint8_t at = (uint8_t)((c->fates_next + FATES_SIZE - i) % FATES_SIZE);
        if (c->fates[at].item == item && c->fates[at].epoch == epoch) {
            return &c->fates[at];
        }
    }
    return 0;
}

static const dedup_t *find_dedup(const core_t *c, uint16_t seq, uint8_t type)
{
    for (uint8_t i = 0; i < c->dedup_count; i++) {
        const dedup_t *d = &c->dedup[i];
        uint32_t age = c->now - d->time;
        if (d->seq == seq && d->type == type && age <= (uint32_t)DEDUP_TTL_MS * 1000u) {
            return d;
        }
    }
    return 0;
}

static void remember(core_t *c, uint16_t seq, uint8_t type, uint8_t nak)
{
    dedup_t *d = &c->dedup[c->dedup_next];
    d->time = c->now;
    d->seq = seq;
    d->type = type;
    d->nak = nak;
    c->dedup_next = (uint8_t)((c->dedup_next + 1u) % DEDUP_SIZE);
    if (c->dedup_count < DEDUP_SIZE) {
        c->dedup_count++;
    }
}

/* ---- outputs, queue, safe state --------------------------------------------------------- */

static void fire_gate(core_t *c, uint8_t gate)
{
    c->hal->gate(c->hal->user, gate, 1);
    c->gate_on[gate] = 1;
    c->gate_off_at[gate] = c->now + (uint32_t)c->pulse_ms[gate] * 1000u;
}

static void all_gates_low(core_t *c)
{
    for (uint8_t g = 0; g < MAX_GATES; g++) {
        c->hal->gate(c->hal->user, g, 0);
        c->gate_on[g] = 0;
    }
}

/* The belt may run only while this permit is driven high (de-energise to stop). */
static void set_run(core_t *c, uint8_t on)
{
    c->run = on ? 1u : 0u;
    c->hal->belt_run(c->hal->user, c->run);
}

static void remove_at(core_t *c, uint8_t i)
{
    for (uint8_t j = i; j + 1u < c->queue_len; j++) {
        c->queue[j] = c->queue[j + 1u];
    }
    c->queue_len--;
}

static int find_pending(const core_t *c, uint32_t item, uint16_t epoch)
{
    for (uint8_t i = 0; i < c->queue_len && i < QUEUE_SIZE; i++) {
        if (c->queue[i].item == item && c->queue[i].epoch == epoch) {
            return i;
        }
    }
    return -1;
}

void core_enter_safe(core_t *c, uint8_t reason)
{
    if (c->safe) {
        return;
    }
    uint8_t dropped = 0;
    all_gates_low(c);
    set_run(c, 0);
    for (uint8_t i = 0; i < c->queue_len && i < QUEUE_SIZE; i++) {
        record_fate(c, c->queue[i].item, c->queue[i].epoch, FATE_DROPPED);
        dropped++;
    }
    c->queue_len = 0;
    c->safe = 1;
    c->safe_reason = reason;
    c->safe_dropped = dropped;
    c->safe_renotify = 1;
    send_safe_state(c, 1, reason, dropped);
}

/* RESUME: leave the safe state (if in it) and assert the belt-run permit (if configured). */
static void do_resume(core_t *c)
{
    uint8_t was_safe = c->safe;
    c->safe = 0;
    c->safe_renotify = 0;
    c->last_rx = c->now;
    set_run(c, c->configured);
    if (was_safe) {
        send_safe_state(c, 0, SAFE_RESUMED, 0);
    }
}

/* Fires what is due, reports LATE what can no longer fire. */
static void service_queue(core_t *c)
{
    uint8_t p[15];
    if (c->queue_len > QUEUE_SIZE) {
        c->queue_len = 0;
        core_fault(c, FAULT_QUEUE_CORRUPT, 0);
        core_enter_safe(c, SAFE_FAULT);
        return;
    }
    uint8_t i = 0;
    while (i < c->queue_len) {
        const pending_t e = c->queue[i];
        int32_t past;
        if (e.mode == MODE_NOW) {
            past = 0;
        } else if (e.mode == MODE_POSITION) {
            past = (int32_t)((uint32_t)c->position - e.target);
        } else {
            past = (int32_t)(c->now - e.target);
        }
        if (past < 0) {
            i++;
            continue;
        }
        remove_at(c, i);
        put_u32(p, e.item);
        p[4] = e.gate;
        put_u32(p + 5, c->now);
        put_u16(p + 13, e.epoch);
        if (past <= (int32_t)e.window) {
            fire_gate(c, e.gate);
            put_u32(p + 9, (uint32_t)c->position);
            record_fate(c, e.item, e.epoch, FATE_FIRED);
            c->fired = sat_inc(c->fired);
            send_msg(c, MSG_FIRED, p, 15);
        } else {
            put_u32(p + 9, e.target);
            record_fate(c, e.item, e.epoch, FATE_LATE);
            c->late = sat_inc(c->late);
            send_msg(c, MSG_LATE, p, 15);
        }
    }
}

/* ---- commands --------------------------------------------------------------------------- */

static uint8_t do_config(core_t *c, const frame_t *f)
{
    uint16_t heartbeat_ms = get_u16(f->payload);
    uint16_t status_ms = get_u16(f->payload + 2);
    uint16_t max_lead_ms = get_u16(f->payload + 4);
    uint8_t n = f->payload[6];
    if (n == 0 || n > c->hw_gates) {
        return NAK_BAD_GATE;
    }
    if (heartbeat_ms < 50u || status_ms < 100u || max_lead_ms < MIN_MAX_LEAD_MS) {
        return NAK_BAD_VALUE;
    }
    for (uint8_t g = 0; g < n; g++) {
        if (f->payload[7 + g] == 0) {
            return NAK_BAD_VALUE;
        }
    }
    c->heartbeat_ms = heartbeat_ms;
    c->status_ms = status_ms;
    c->max_lead_ms = max_lead_ms;
    c->n_gates = n;
    for (uint8_t g = 0; g < n; g++) {
        c->pulse_ms[g] = f->payload[7 + g];
    }
    c->configured = 1;
    return 0;
}

/* The fate of (item, epoch): PENDING while queued, else the latest recorded, else UNKNOWN. */
static uint8_t fate_of(const core_t *c, uint32_t item, uint16_t epoch, uint32_t *when)
{
    *when = 0;
    if (find_pending(c, item, epoch) >= 0) {
        return FATE_PENDING;
    }
    const fate_t *r = find_fate(c, item, epoch);
    if (r == 0) {
        return FATE_UNKNOWN;
    }
    *when = r->time;
    return r->fate;
}

static void send_fate(core_t *c, uint16_t seq, uint32_t item, uint16_t epoch, uint8_t fate,
                      uint32_t when)
{
    uint8_t p[13];
    put_u16(p, seq);
    put_u32(p + 2, item);
    p[6] = fate;
    put_u32(p + 7, when);
    put_u16(p + 11, epoch);
    send_msg(c, MSG_FATE, p, 13);
}

/* 0 if a new SORT may be queued, else the NAK reason. */
static uint8_t check_sort(const core_t *c, const pending_t *e)
{
    if (!c->configured) {
        return NAK_NOT_CONFIGURED;
    }
    if (c->safe) {
        return NAK_SAFE_STATE;
    }
    if (e->gate >= c->n_gates) {
        return NAK_BAD_GATE;
    }
    if (e->mode > MODE_NOW || (e->mode == MODE_POSITION && !c->has_encoder)) {
        return NAK_BAD_VALUE;
    }
    if (e->mode == MODE_TIME &&
        (int32_t)(e->target - c->now) > (int32_t)((uint32_t)c->max_lead_ms * 1000u)) {
        return NAK_BAD_TARGET;
    }
    if (e->mode == MODE_POSITION && (int32_t)(e->target - (uint32_t)c->position) > MAX_AHEAD) {
        return NAK_BAD_TARGET;
    }
    if (c->queue_len >= QUEUE_SIZE) {
        return NAK_QUEUE_FULL;
    }
    return 0;
}

/* SORT is idempotent per (epoch, item): a SORT of an older epoch is NAKed STALE_EPOCH, a
 * repeated one is answered with the item's fate (FATE) and never run again, and a refused
 * one is remembered as REFUSED. */
static void do_sort(core_t *c, const frame_t *f)
{
    pending_t e;
    uint32_t when;
    e.item = get_u32(f->payload);
    e.gate = f->payload[4];
    e.mode = f->payload[5];
    e.target = get_u32(f->payload + 6);
    e.window = get_u16(f->payload + 10);
    e.epoch = get_u16(f->payload + 12);
    if (e.epoch != c->epoch) {
        send_answer(c, f->seq, f->type, NAK_STALE_EPOCH);
        return;
    }
    uint8_t fate = fate_of(c, e.item, e.epoch, &when);
    if (fate != FATE_UNKNOWN) {
        send_fate(c, f->seq, e.item, e.epoch, fate, when);
        return;
    }
    uint8_t nak = check_sort(c, &e);
    if (nak != 0) {
        record_fate(c, e.item, e.epoch, FATE_REFUSED);
        send_answer(c, f->seq, f->type, nak);
        return;
    }
    c->queue[c->queue_len++] = e;
    send_answer(c, f->seq, f->type, 0);
    service_queue(c); /* NOW, or already due / already late */
}

static uint8_t do_cancel(core_t *c, const frame_t *f)
{
    uint32_t item = get_u32(f->payload);
    uint16_t epoch = get_u16(f->payload + 4);
    int i = find_pending(c, item, epoch);
    if (i < 0) {
        return NAK_NOT_FOUND;
    }
    remove_at(c, (uint8_t)i);
    record_fate(c, item, epoch, FATE_CANCELLED);
    return 0;
}

static void do_hello(core_t *c, const frame_t *f)
{
    uint8_t p[14];
    c->dedup_count = 0;
    c->dedup_next = 0;
    c->epoch = get_u16(f->payload);
    put_u16(p, f->seq);
    p[2] = FW_VERSION_MAJOR;
    p[3] = FW_VERSION_MINOR;
    p[4] = FW_VERSION_PATCH;
    p[5] = PROTO_VERSION;
    p[6] = c->hw_gates;
    p[7] = flags(c);
    p[8] = QUEUE_SIZE;
    put_u32(p + 9, TIME_HZ);
    send_msg(c, MSG_HELLO_INFO, p, 13);
    send_status(c);
}

static void do_sync(core_t *c, const frame_t *f)
{
    uint8_t p[14];
    put_u16(p, f->seq);
    for (uint8_t i = 0; i < 4u; i++) {
        p[2 + i] = f->payload[i];
    }
    put_u32(p + 6, c->now);
    put_u32(p + 10, (uint32_t)c->position);
    send_msg(c, MSG_SYNC_REPLY, p, 14);
}

/* QUERY: PENDING, the remembered fate, or UNKNOWN. A controller not configured since it
 * started remembers nothing from before (it was reset, or is new): NAK NOT_CONFIGURED, so
 * that the host never takes its UNKNOWN for the word of the controller it sent to. */
static void do_query(core_t *c, const frame_t *f)
{
    if (!c->configured) {
        send_answer(c, f->seq, f->type, NAK_NOT_CONFIGURED);
        return;
    }
    uint32_t when;
    uint32_t item = get_u32(f->payload);
    uint16_t epoch = get_u16(f->payload + 4);
    uint8_t fate = fate_of(c, item, epoch, &when);
    send_fate(c, f->seq, item, epoch, fate, when);
}

/* The payload length a command with side effects must have (CONFIG: 5 + n_gates). */
static uint8_t length_ok(const frame_t *f)
{
    switch (f->type) {
    case MSG_CONFIG:
        return f->len >= 7u && f->len == 7u + f->payload[6];
    case MSG_CANCEL:
        return f->len == 6u;
    default: /* RESUME, SAFE */
        return f->len == 0;
    }
}

/* CONFIG, CANCEL, RESUME, SAFE: answered from the dedup window when repeated (SORT has
 * its own rule, do_sort). A wrong length is NAKed without being remembered
 * (PROTOCOL_CHANGES.md, 4). */
static void do_remembered(core_t *c, const frame_t *f)
{
    if (!length_ok(f)) {
        send_answer(c, f->seq, f->type, NAK_BAD_LENGTH);
        return;
    }
    const dedup_t *d = find_dedup(c, f->seq, f->type);
    if (d != 0) {
        send_answer(c, f->seq, f->type, d->nak);
        return;
    }
    uint8_t nak = 0;
    switch (f->type) {
    case MSG_CONFIG:
        nak = do_config(c, f);
        break;
    case MSG_CANCEL:
        nak = do_cancel(c, f);
        break;
    default: /* RESUME, SAFE */
        break;
    }
    remember(c, f->seq, f->type, nak);
    send_answer(c, f->seq, f->type, nak);
    if (nak != 0) {
        return;
    }
    if (f->type == MSG_SAFE) {
        core_enter_safe(c, SAFE_COMMAND);
    } else if (f->type == MSG_RESUME) {
        do_resume(c);
    } else if (f->type == MSG_CONFIG) {
        c->last_rx = c->now;
    }
}

static void handle_frame(core_t *c, const frame_t *f)
{
    c->last_rx = c->now;
    if (c->safe && c->safe_renotify) {
        c->safe_renotify = 0;
        send_safe_state(c, 1, c->safe_reason, c->safe_dropped);
    }
    if (f->ver != PROTO_VERSION) {
        send_answer(c, f->seq, f->type, NAK_BAD_VERSION);
        return;
    }
    switch (f->type) {
    case MSG_HELLO:
        if (f->len != 2u) {
            send_answer(c, f->seq, f->type, NAK_BAD_LENGTH);
        } else {
            do_hello(c, f);
        }
        break;
    case MSG_HEARTBEAT:
        if (f->len != 0) {
            send_answer(c, f->seq, f->type, NAK_BAD_LENGTH);
        }
        break;
    case MSG_SORT:
        if (f->len != 14u) {
            send_answer(c, f->seq, f->type, NAK_BAD_LENGTH);
        } else {
            do_sort(c, f);
        }
        break;
    case MSG_SYNC:
    case MSG_QUERY:
        if (f->len != (f->type == MSG_SYNC ? 4u : 6u)) {
            send_answer(c, f->seq, f->type, NAK_BAD_LENGTH);
        } else if (f->type == MSG_SYNC) {
            do_sync(c, f);
        } else {
            do_query(c, f);
        }
        break;
    case MSG_CONFIG:
    case MSG_CANCEL:
    case MSG_RESUME:
    case MSG_SAFE:
        do_remembered(c, f);
        break;
    default:
        send_answer(c, f->seq, f->type, NAK_UNKNOWN_TYPE);
        break;
    }
}

/* ---- entry points ----------------------------------------------------------------------- */

void core_init(core_t *c, const core_hal_t *hal, uint8_t hw_gates, uint8_t has_encoder,
               uint32_t now, uint8_t boot_fault)
{
    uint8_t *raw = (uint8_t *)c;
    for (uint16_t i = 0; i < sizeof *c; i++) {
        raw[i] = 0;
    }
    c->hal = hal;
    deframer_init(&c->rx);
    c->hw_gates = hw_gates > MAX_GATES ? MAX_GATES : hw_gates;
    c->has_encoder = has_encoder ? 1 : 0;
    c->heartbeat_ms = DEFAULT_HEARTBEAT_MS;
    c->status_ms = DEFAULT_STATUS_MS;
    c->max_lead_ms = DEFAULT_MAX_LEAD_MS;
    c->now = now;
    c->last_rx = now;
    all_gates_low(c);
    set_run(c, 0); /* the belt stays stopped until a host CONFIGs and RESUMEs */
    if (boot_fault != 0) {
        core_fault(c, boot_fault, 0);
        core_enter_safe(c, SAFE_FAULT);
    }
    send_status(c);
}

void core_rx_byte(core_t *c, uint8_t byte, uint32_t now, int32_t position)
{
    c->now = now;
    c->position = position;
    switch (deframer_push(&c->rx, byte)) {
    case DEFRAME_FRAME:
        c->frames_ok = sat_inc(c->frames_ok);
        handle_frame(c, &c->rx.frame);
        break;
    case DEFRAME_CRC_ERROR:
        c->crc_errors = sat_inc(c->crc_errors);
        break;
    case DEFRAME_FRAME_ERROR:
        c->frame_errors = sat_inc(c->frame_errors);
        break;
    default:
        break;
    }
}

uint8_t core_due_soon(const core_t *c, uint32_t now, uint32_t horizon_us)
{
    if (c->safe) {
        return 0;
    }
    for (uint8_t i = 0; i < c->queue_len && i < QUEUE_SIZE; i++) {
        const pending_t *e = &c->queue[i];
        if (e->mode != MODE_TIME || (int32_t)(e->target - now) < (int32_t)horizon_us) {
            return 1;
        }
    }
    return 0;
}

void core_poll(core_t *c, uint32_t now, int32_t position)
{
    c->now = now;
    c->position = position;
    for (uint8_t g = 0; g < MAX_GATES; g++) {
        if (c->gate_on[g] && (int32_t)(now - c->gate_off_at[g]) >= 0) {
            c->hal->gate(c->hal->user, g, 0);
            c->gate_on[g] = 0;
        }
    }
    if (c->configured && !c->safe &&
        (uint32_t)(now - c->last_rx) > (uint32_t)c->heartbeat_ms * 1000u) {
        core_enter_safe(c, SAFE_HEARTBEAT);
    }
    if (!c->safe) {
        service_queue(c);
    }
    if ((uint32_t)(now - c->last_status) >= (uint32_t)c->status_ms * 1000u) {
        send_status(c);
    }
}
