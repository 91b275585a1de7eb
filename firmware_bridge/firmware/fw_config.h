/* Protocol constants shared by the portable core and the AVR build (PROTOCOL.md, version 1). */
#ifndef FW_CONFIG_H
#define FW_CONFIG_H

#define FW_VERSION_MAJOR 1
#define FW_VERSION_MINOR 1
#define FW_VERSION_PATCH 1

#define PROTO_VERSION 1u
#define MAX_PAYLOAD 32u
#define MIN_BODY 6u                         /* ver, type, seq(2), crc(2) */
#define MAX_BODY (MIN_BODY + MAX_PAYLOAD)   /* 38 */
#define MAX_FRAME (MAX_BODY + 2u)           /* COBS overhead byte + delimiter: 40 */

#define QUEUE_SIZE 16u   /* pending SORT commands */
#define DEDUP_SIZE 16u   /* remembered command seqs */
#define FATES_SIZE 32u   /* remembered item fates */
#define MAX_GATES 12u    /* outputs the board offers (README pinout) */

#define TIME_HZ 1000000UL
/* A TIME target more than this many us ahead (or a POSITION target this many ticks
 * ahead) is NAKed BAD_TARGET: 2^30, 17.9 minutes. */
#define MAX_AHEAD 0x40000000L
/* A duplicate-window entry older than this is forgotten (ms). */
#define DEDUP_TTL_MS 5000u
#define MIN_MAX_LEAD_MS 100u
#define DEFAULT_MAX_LEAD_MS 10000u

/* Host -> controller message types. */
#define MSG_HELLO 0x01u
#define MSG_CONFIG 0x02u
#define MSG_SORT 0x03u
#define MSG_CANCEL 0x04u
#define MSG_HEARTBEAT 0x05u
#define MSG_SYNC 0x06u
#define MSG_RESUME 0x07u
#define MSG_QUERY 0x08u
#define MSG_SAFE 0x09u

/* Controller -> host message types. */
#define MSG_ACK 0x80u
#define MSG_NAK 0x81u
#define MSG_HELLO_INFO 0x82u
#define MSG_FIRED 0x83u
#define MSG_LATE 0x84u
#define MSG_SAFE_STATE 0x85u
#define MSG_SYNC_REPLY 0x86u
#define MSG_FAULT 0x87u
#define MSG_STATUS 0x88u
#define MSG_FATE 0x89u

/* NAK reasons. */
#define NAK_UNKNOWN_TYPE 1u
#define NAK_BAD_LENGTH 2u
#define NAK_BAD_VERSION 3u
#define NAK_BAD_GATE 4u
#define NAK_BAD_VALUE 5u
#define NAK_BAD_TARGET 6u
#define NAK_QUEUE_FULL 7u
#define NAK_NOT_FOUND 8u
#define NAK_SAFE_STATE 9u
#define NAK_NOT_CONFIGURED 10u
#define NAK_STALE_EPOCH 11u

/* SORT modes. */
#define MODE_TIME 0u
#define MODE_POSITION 1u
#define MODE_NOW 2u

/* Fates. */
#define FATE_UNKNOWN 0u
#define FATE_PENDING 1u
#define FATE_FIRED 2u
#define FATE_LATE 3u
#define FATE_CANCELLED 4u
#define FATE_DROPPED 5u
#define FATE_REFUSED 6u

/* SAFE_STATE reasons. */
#define SAFE_HEARTBEAT 1u
#define SAFE_COMMAND 2u
#define SAFE_FAULT 3u
#define SAFE_RESUMED 4u

/* FAULT codes. */
#define FAULT_RX_OVERFLOW 1u
#define FAULT_QUEUE_CORRUPT 2u
#define FAULT_WATCHDOG_RESET 3u

/* HELLO_INFO / STATUS flag bits. */
#define FLAG_ENCODER 0x01u
#define FLAG_CONFIGURED 0x02u
#define FLAG_SAFE 0x04u
#define FLAG_RUN 0x08u

#define DEFAULT_STATUS_MS 1000u
#define DEFAULT_HEARTBEAT_MS 500u

#endif
