/* Host tests of the portable core: the shared protocol vectors (vectors.txt) and a few
 * behaviour checks. Build and run with `make host-test` (ASan + UBSan). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cobs.h"
#include "crc16.h"
#include "frame.h"
#include "host_harness.h"

static int failures;
static int checks;

#define CHECK(cond, ...)                                                                       \
    do {                                                                                       \
        checks++;                                                                              \
        if (!(cond)) {                                                                         \
            failures++;                                                                        \
            fprintf(stderr, "FAIL %s:%d: ", __FILE__, __LINE__);                              \
            fprintf(stderr, __VA_ARGS__);                                                      \
            fputc('\n', stderr);                                                               \
        }                                                                                      \
    } while (0)

/* Parses hex ("-" is empty) into out; returns the length or -1. */
static int unhex(const char *s, uint8_t *out, size_t cap)
{
    if (strcmp(s, "-") == 0) {
        return 0;
    }
    size_t n = strlen(s);
    if (n % 2 != 0 || n / 2 > cap) {
        return -1;
    }
    for (size_t i = 0; i < n / 2; i++) {
        unsigned v;
        if (sscanf(s + 2 * i, "%2x", &v) != 1) {
            return -1;
        }
        out[i] = (uint8_t)v;
    }
    return (int)(n / 2);
}

static fwh_t harness;

/* Decodes every frame in buf; calls back for each. Returns the number of frames. */
static int frames_in(const uint8_t *buf, size_t len, frame_t *frames, int cap)
{
    deframer_t d;
    int n = 0;
    deframer_init(&d);
    for (size_t i = 0; i < len; i++) {
        if (deframer_push(&d, buf[i]) == DEFRAME_FRAME && n < cap) {
            frames[n++] = d.frame;
        }
    }
    return n;
}

static void run_vector(char **tok, int ntok, const char *line)
{
    static uint8_t a[512], b[512], c[512];
    const char *kind = tok[0];
    const char *name = ntok > 1 ? tok[1] : "?";
    if (strcmp(kind, "crc") == 0 && ntok >= 4) {
        int n = unhex(tok[2], a, sizeof a);
        unsigned want = (unsigned)strtoul(tok[3], NULL, 16);
        CHECK(n >= 0 && crc16_ccitt(a, (size_t)n) == want, "crc %s", name);
    } else if (strcmp(kind, "cobs") == 0 && ntok >= 4) {
        int n = unhex(tok[2], a, sizeof a);
        int m = unhex(tok[3], b, sizeof b);
        size_t e = cobs_encode(a, (size_t)n, c, sizeof c);
        CHECK((int)e == m && memcmp(c, b, (size_t)m) == 0, "cobs encode %s", name);
        int d = cobs_decode(b, (size_t)m, c, sizeof c);
        CHECK(d == n && memcmp(c, a, (size_t)n) == 0, "cobs decode %s", name);
    } else if (strcmp(kind, "msg") == 0 && ntok >= 7) {
        unsigned type = (unsigned)strtoul(tok[2], NULL, 16);
        unsigned seq = (unsigned)strtoul(tok[3], NULL, 16);
        int plen = unhex(tok[4], a, sizeof a);
        int wlen = unhex(tok[6], b, sizeof b);
        uint8_t wire[MAX_FRAME];
        uint8_t n = frame_build((uint8_t)type, (uint16_t)seq, a, (uint8_t)plen, wire);
        CHECK(n == wlen && memcmp(wire, b, (size_t)n) == 0, "msg build %s", name);
        frame_t f;
        enum deframe_result r = frame_decode(b, (size_t)(wlen - 1), &f);
        CHECK(r == DEFRAME_FRAME && f.type == type && f.seq == seq && f.len == plen &&
                  memcmp(f.payload, a, (size_t)plen) == 0,
              "msg decode %s", name);
    } else if (strcmp(kind, "stream") == 0 && ntok >= 6) {
        int wlen = unhex(tok[2], a, sizeof a);
        int want_frames = atoi(tok[3]), want_crc = atoi(tok[4]), want_fe = atoi(tok[5]);
        deframer_t d;
        int frames = 0, crc = 0, fe = 0;
        deframer_init(&d);
        for (int i = 0; i < wlen; i++) {
            enum deframe_result r = deframer_push(&d, a[i]);
            frames += r == DEFRAME_FRAME;
            crc += r == DEFRAME_CRC_ERROR;
            fe += r == DEFRAME_FRAME_ERROR;
        }
        CHECK(wlen >= 0 && frames == want_frames && crc == want_crc && fe == want_fe,
              "stream %s: got %d/%d/%d want %d/%d/%d", name, frames, crc, fe, want_frames,
              want_crc, want_fe);
    } else if (strcmp(kind, "nak") == 0 && ntok >= 6) {
        int wlen = unhex(tok[2], a, sizeof a);
        unsigned seq = (unsigned)strtoul(tok[3], NULL, 16);
        unsigned type = (unsigned)strtoul(tok[4], NULL, 16);
        unsigned reason = (unsigned)atoi(tok[5]);
        fwh_init(&harness, MAX_GATES, 0, 1000, 0);
        fwh_take(&harness, c, sizeof c); /* the boot STATUS */
        fwh_feed(&harness, a, (size_t)wlen, 2000, 0);
        size_t olen = fwh_take(&harness, c, sizeof c);
        frame_t out[8];
        int n = frames_in(c, olen, out, 8);
        int found = 0;
        for (int i = 0; i < n; i++) {
            if (out[i].type == MSG_NAK && out[i].len == 4 &&
                (out[i].payload[0] | (out[i].payload[1] << 8)) == (int)seq &&
                out[i].payload[2] == type && out[i].payload[3] == reason) {
                found = 1;
            }
        }
        CHECK(found, "nak %s: no NAK(seq %04X, type %02X, reason %u) among %d frames", name,
              seq, type, reason, n);
    } else if (strcmp(kind, "timediff") == 0 && ntok >= 5) {
        uint32_t x = (uint32_t)strtoul(tok[2], NULL, 16);
        uint32_t y = (uint32_t)strtoul(tok[3], NULL, 16);
        long want = strtol(tok[4], NULL, 10);
        CHECK((long)(int32_t)(x - y) == want, "timediff %s", name);
    } else {
        fprintf(stderr, "note: unknown vector line ignored: %s", line);
    }
}

static int run_vectors(const char *path)
{
    FILE *fp = fopen(path, "r");
    if (fp == NULL) {
        fprintf(stderr, "error: cannot open vectors file %s (run make_vectors, or pass "
                        "VECTORS=path)\n", path);
        return -1;
    }
    char line[4096];
    int n = 0;
    while (fgets(line, sizeof line, fp) != NULL) {
        if (line[0] == '#' || line[0] == '\n') {
            continue;
        }
        char copy[4096];
        char *tok[64];
        int ntok = 0;
        strcpy(copy, line);
        for (char *t = strtok(copy, " \n"); t != NULL && ntok < 64; t = strtok(NULL, " \n")) {
            tok[ntok++] = t;
        }
        if (ntok > 0) {
            run_vector(tok, ntok, line);
            n++;
        }
    }
    fclose(fp);
    return n;
}

/* ---- behaviour ----------------------------------------------------------------------- */

static uint16_t host_seq = 1;

static void send_cmd(uint8_t type, const uint8_t *payload, uint8_t len, uint32_t now)
{
    uint8_t wire[MAX_FRAME];
    uint8_t n = frame_build(type, host_seq++, payload, len, wire);
    fwh_feed(&harness, wire, n, now, 0);
}

static int take_frames(frame_t *out, int cap)
{
    static uint8_t buf[FWH_OUT_CAP];
    size_t n = fwh_take(&harness, buf, sizeof buf);
    return frames_in(buf, n, out, cap);
}

static int count_type(const frame_t *f, int n, uint8_t type)
{
    int k = 0;
    for (int i = 0; i < n; i++) {
        k += f[i].type == type;
    }
    return k;
}

static void test_sort_fires_on_time(void)
{
    frame_t out[32];
    /* 5 s heartbeat, 1 s status, 10 s max lead, 2 gates */
    uint8_t config[] = {0x88, 0x13, 0xE8, 0x03, 0x10, 0x27, 2, 40, 40};
    /* epoch 0: no HELLO yet */
    uint8_t sort[14] = {7, 0, 0, 0, 1, MODE_TIME, 0x40, 0x42, 0x0F, 0x00, 0x88, 0x13, 0, 0};
    fwh_init(&harness, MAX_GATES, 0, 0, 0);
    send_cmd(MSG_CONFIG, config, sizeof config, 100);
    send_cmd(MSG_SORT, sort, sizeof sort, 200); /* item 7, gate 1, at 1 s, window 5 ms */
    int n = take_frames(out, 32);
    CHECK(count_type(out, n, MSG_ACK) == 2, "config and sort ACKed");
    fwh_poll(&harness, 999999, 0);
    CHECK(fwh_gate_rises(&harness, 1) == 0, "not fired before the target");
    send_cmd(MSG_HEARTBEAT, NULL, 0, 999999);
    fwh_poll(&harness, 1000100, 0);
    n = take_frames(out, 32);
    CHECK(count_type(out, n, MSG_FIRED) == 1 && fwh_gate_level(&harness, 1) == 1,
          "fired at the target");
    fwh_poll(&harness, 1040100, 0);
    CHECK(fwh_gate_level(&harness, 1) == 0, "pulse ended after 40 ms");
    /* The same SORT again, same seq and a new seq: answered with its fate (FATE FIRED),
     * never executed twice. */
    take_frames(out, 32);
    host_seq--;
    send_cmd(MSG_SORT, sort, sizeof sort, 1040100);
    send_cmd(MSG_SORT, sort, sizeof sort, 1040200);
    n = take_frames(out, 32);
    CHECK(fwh_gate_rises(&harness, 1) == 1, "fired once");
    CHECK(count_type(out, n, MSG_FATE) == 2 && count_type(out, n, MSG_ACK) == 0 &&
              out[0].payload[6] == FATE_FIRED,
          "a repeated SORT is answered with FATE FIRED");
}

static void test_epochs_and_lead(void)
{
    frame_t out[32];
    uint8_t hello[2] = {0x34, 0x12}; /* epoch 0x1234 */
    uint8_t config[] = {0x88, 0x13, 0xE8, 0x03, 0xE8, 0x03, 1, 40}; /* max lead 1 s */
    uint8_t sort[14] = {9, 0, 0, 0, 0, MODE_TIME, 0x40, 0x42, 0x0F, 0x00, 0x88, 0x13, 0, 0};
    fwh_init(&harness, MAX_GATES, 0, 0, 0);
    send_cmd(MSG_CONFIG, config, sizeof config, 100);
    send_cmd(MSG_HELLO, hello, sizeof hello, 100);
    take_frames(out, 32);
    send_cmd(MSG_SORT, sort, sizeof sort, 200); /* epoch 0: an older session's SORT */
    int n = take_frames(out, 32);
    CHECK(n == 1 && out[0].type == MSG_NAK && out[0].payload[3] == NAK_STALE_EPOCH,
          "SORT of another epoch NAKed STALE_EPOCH");
    sort[12] = 0x34;
    sort[13] = 0x12;
    sort[6] = 0x80; /* target 0x0F4280 + 0x40 = 1000000 + 64 us: ok; now 2 s ahead: */
    sort[8] = 0x1F; /* 0x1F4280 = 2048640 us ahead of 200 us: beyond the 1 s lead */
    send_cmd(MSG_SORT, sort, sizeof sort, 200);
    n = take_frames(out, 32);
    CHECK(n == 1 && out[0].type == MSG_NAK && out[0].payload[3] == NAK_BAD_TARGET,
          "a target beyond the max lead NAKed BAD_TARGET");
    send_cmd(MSG_SORT, sort, sizeof sort, 300); /* the same item again: its fate, REFUSED */
    n = take_frames(out, 32);
    CHECK(n == 1 && out[0].type == MSG_FATE && out[0].payload[6] == FATE_REFUSED,
          "a refused item stays refused");
    CHECK(fwh_belt_stop(&harness) == 1, "belt stopped until RESUME");
    send_cmd(MSG_RESUME, NULL, 0, 400);
    CHECK(fwh_belt_stop(&harness) == 0, "belt may run after CONFIG and RESUME");
}

static void test_dedup_expires(void)
{
    frame_t out[32];
    uint8_t config[] = {0x88, 0x13, 0xE8, 0x03, 0x10, 0x27, 1, 40};
    fwh_init(&harness, MAX_GATES, 0, 0, 0);
    send_cmd(MSG_CONFIG, config, sizeof config, 100);
    send_cmd(MSG_RESUME, NULL, 0, 100);
    send_cmd(MSG_SAFE, NULL, 0, 200);
    take_frames(out, 32);
    host_seq--; /* the SAFE's seq again, soon: a replay */
    send_cmd(MSG_SAFE, NULL, 0, 300);
    send_cmd(MSG_RESUME, NULL, 0, 400);
    host_seq = (uint16_t)(host_seq - 2u);
    send_cmd(MSG_RESUME, NULL, 0, 500); /* same seq as the SAFE, other type: runs */
    int n = take_frames(out, 32);
    CHECK(count_type(out, n, MSG_ACK) == 3 && fwh_belt_stop(&harness) == 0, "RESUME ran");
    host_seq--;
    /* the RESUME's seq comes back after DEDUP_TTL_MS: an old entry, not a replay */
    send_cmd(MSG_SAFE, NULL, 0, 200 + DEDUP_TTL_MS * 1000u + 1000u);
    CHECK(fwh_belt_stop(&harness) == 1, "expired window entry: SAFE executed");
}

static void test_heartbeat_loss(void)
{
    frame_t out[32];
    uint8_t config[] = {100, 0, 0xE8, 0x03, 0x10, 0x27, 1, 10}; /* 100 ms heartbeat */
    fwh_init(&harness, MAX_GATES, 0, 0, 0);
    send_cmd(MSG_CONFIG, config, sizeof config, 0);
    send_cmd(MSG_RESUME, NULL, 0, 0);
    take_frames(out, 32);
    fwh_poll(&harness, 100000, 0);
    CHECK(fwh_belt_stop(&harness) == 0, "not safe at exactly the timeout");
    fwh_poll(&harness, 100001, 0);
    int n = take_frames(out, 32);
    CHECK(count_type(out, n, MSG_SAFE_STATE) == 1 && fwh_belt_stop(&harness) == 1,
          "safe state after heartbeat loss");
    send_cmd(MSG_HEARTBEAT, NULL, 0, 200000);
    n = take_frames(out, 32);
    CHECK(count_type(out, n, MSG_SAFE_STATE) == 1, "SAFE_STATE re-sent when the host returns");
    send_cmd(MSG_RESUME, NULL, 0, 200000);
    n = take_frames(out, 32);
    CHECK(count_type(out, n, MSG_ACK) == 1 && count_type(out, n, MSG_SAFE_STATE) == 1 &&
              fwh_belt_stop(&harness) == 0,
          "RESUME leaves the safe state");
}

/* Built-in profile 2 (test_encoder.h): the counts at the knots, never going backwards. */
static void test_encoder_profile(void)
{
    enc_profile_t prof;
    static const uint32_t at_s[] = {0u, 3u, 4u, 7u, 8u, 10u, 13u, 20u};
    static const int32_t want[] = {0, 6000, 7800, 12600, 14400, 18400, 24400, 36800};
    CHECK(enc_builtin_profile(&prof, 2) == 0 && prof.period == 625000u, "profile 2 loads");
    for (unsigned i = 0; i < sizeof at_s / sizeof at_s[0]; i++) {
        int32_t got = enc_profile_position(&prof, at_s[i] * 1000000u);
        CHECK(got == want[i], "profile 2 at %u s: %ld, want %ld", at_s[i], (long)got,
              (long)want[i]);
    }
    int32_t last = 0;
    int backwards = 0;
    for (uint32_t t = 0; t < 20000000u; t += 16u) {
        int32_t x = enc_profile_position(&prof, t);
        backwards += x < last;
        last = x;
    }
    CHECK(backwards == 0, "profile 2 never counts backwards (%d times)", backwards);
    const enc_seg_t too_long_ramp = {70000u, 10u, 20u};
    CHECK(enc_profile_set(&prof, &too_long_ramp, 1) == 1, "a ramp over 65535 units refused");
    CHECK(enc_builtin_profile(&prof, 9) == 1, "an unknown profile refused");
}

int main(int argc, char **argv)
{
    const char *path = argc > 1 ? argv[1] : "../vectors/vectors.txt";
    int n = run_vectors(path);
    if (n < 0) {
        return 2;
    }
    test_sort_fires_on_time();
    test_heartbeat_loss();
    test_epochs_and_lead();
    test_dedup_expires();
    test_encoder_profile();
    printf("host-test: %d vectors, %d checks, %d failures\n", n, checks, failures);
    return failures == 0 ? 0 : 1;
}
