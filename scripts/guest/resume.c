// SPDX-License-Identifier: GPL-2.0
/*
 * vms-resume SEED_HEX: what a clone's guest runs first after it resumed
 * from a live image (scripts/guest/identity calls it, through the agent).
 *
 * A clone starts with its parent's memory, so with its parent's CRNG state:
 * every clone would hand out the same "random" bytes until the kernel's
 * next scheduled reseed (up to a minute later), and with the parent's wall
 * clock, stale by however long the image sat. This helper
 *   1. credits SEED (32 bytes of host entropy, hex) to the input pool with
 *      RNDADDENTROPY, then forces a reseed of the CRNG with RNDRESEEDCRNG,
 *      so the next read of /dev/urandom or getrandom(2) in any process
 *      draws from fresh state (Linux 5.18 and later reseed every CPU's
 *      CRNG on the next use after a base reseed);
 *   2. asks the VMM for the host's time (the line "@@vms-time?" on its
 *      standard output, which the agent sends to the VMM; the answer, ns
 *      since 1970, arrives as the line "@@vms-time NS" on /dev/ttyS1) and sets
 *      CLOCK_REALTIME to it: late by the serial line's few bytes, not by
 *      however long the command took to start in a fresh clone.
 * busybox can do neither (its `date -s` has one-second resolution and it
 * has no RND* ioctls), hence this program. Both need CAP_SYS_ADMIN and
 * CAP_SYS_TIME: the agent runs as root.
 *
 * Exit status: 0 done; 1 bad arguments; 2 the reseed failed; 3 the clock
 * (no answer within 10 s, or clock_settime failed).
 */
#include <errno.h>
#include <fcntl.h>
#include <linux/random.h>
#include <poll.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <time.h>
#include <unistd.h>

#define SEED_BYTES 32

static int hexval(char c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	if (c >= 'a' && c <= 'f')
		return c - 'a' + 10;
	if (c >= 'A' && c <= 'F')
		return c - 'A' + 10;
	return -1;
}

int main(int argc, char **argv)
{
	/* struct rand_pool_info ends in a flexible array: the seed follows. */
	static int raw[(sizeof(struct rand_pool_info) + SEED_BYTES) / sizeof(int)];
	struct rand_pool_info *seed = (struct rand_pool_info *)raw;
	uint8_t *buf = (uint8_t *)seed->buf;
	struct timespec ts;
	unsigned long long ns;
	char line[64], *end;
	size_t got = 0;
	int fd, i;

	if (argc != 2 || strlen(argv[1]) != 2 * SEED_BYTES) {
		fprintf(stderr, "usage: vms-resume SEED_HEX(%d hex digits)\n", 2 * SEED_BYTES);
		return 1;
	}
	for (i = 0; i < SEED_BYTES; i++) {
		int hi = hexval(argv[1][2 * i]), lo = hexval(argv[1][2 * i + 1]);

		if (hi < 0 || lo < 0) {
			fprintf(stderr, "vms-resume: seed is not hex\n");
			return 1;
		}
		buf[i] = (uint8_t)(hi << 4 | lo);
	}
	seed->entropy_count = SEED_BYTES * 8;
	seed->buf_size = SEED_BYTES;
	fd = open("/dev/urandom", O_WRONLY | O_CLOEXEC);
	if (fd < 0 || ioctl(fd, RNDADDENTROPY, seed) || ioctl(fd, RNDRESEEDCRNG)) {
		fprintf(stderr, "vms-resume: reseeding the CRNG: %s\n", strerror(errno));
		return 2;
	}
	close(fd);
	memset(raw, 0, sizeof(raw));

	/* Ask the VMM for its time; the answer comes on the agent's port. */
	fd = open("/dev/ttyS1", O_RDONLY | O_NOCTTY | O_CLOEXEC);
	if (fd < 0) {
		fprintf(stderr, "vms-resume: /dev/ttyS1: %s\n", strerror(errno));
		return 3;
	}
	/* Spelled in pieces: the request must not be in this file's bytes,
	 * where `strings` or `cat` of it through the agent would make one. */
	printf("@@%s?\n", "vms-time");
	fflush(stdout);
	/*
	 * Lines until the answer, "@@vms-time NS": anything else waiting on
	 * the port (a request the agent had not read when an earlier command
	 * timed out) is read whole and dropped, never left half read.
	 */
	for (;;) {
		struct pollfd p = { .fd = fd, .events = POLLIN };
		char c;
		ssize_t n;

		if (poll(&p, 1, 10000) != 1) {
			fprintf(stderr, "vms-resume: no time from the VMM within 10 s\n");
			return 3;
		}
		n = read(fd, &c, 1);
		if (n < 0 && errno == EINTR)
			continue;
		if (n != 1) {
			fprintf(stderr, "vms-resume: reading the time: %s\n", n ? strerror(errno) : "EOF");
			return 3;
		}
		if (c != '\n') {
			if (got < sizeof(line) - 1)
				line[got++] = c;
			continue;
		}
		line[got] = 0;
		got = 0;
		if (strncmp(line, "@@vms-time ", 11) == 0)
			break;
	}
	close(fd);
	errno = 0;
	ns = strtoull(line + 11, &end, 10);
	if (errno || *end || end == line + 11) {
		fprintf(stderr, "vms-resume: bad time from the VMM: %s\n", line);
		return 3;
	}
	ts.tv_sec = (time_t)(ns / 1000000000ULL);
	ts.tv_nsec = (long)(ns % 1000000000ULL);
	if (clock_settime(CLOCK_REALTIME, &ts)) {
		fprintf(stderr, "vms-resume: setting the clock: %s\n", strerror(errno));
		return 3;
	}
	/* What the VMM looks for: an older guest's vms-identity that ignores
	 * the seed must not pass for one that reseeded. */
	puts("vms-resume: reseeded, clock set");
	return 0;
}
