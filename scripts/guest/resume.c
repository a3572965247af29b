// SPDX-License-Identifier: GPL-2.0
/*
 * vms-resume SEED_HEX EPOCH_NS: what a clone's guest runs first after it
 * resumed from a live image (scripts/guest/identity calls it).
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
 *   2. sets CLOCK_REALTIME to EPOCH_NS (the host's time when the VMM sent
 *      the command; the agent's round trip, milliseconds, is the error).
 * busybox can do neither (its `date -s` has one-second resolution and it
 * has no RND* ioctls), hence this program. Both need CAP_SYS_ADMIN and
 * CAP_SYS_TIME: the agent runs as root.
 *
 * Exit status: 0 done; 1 bad arguments; 2 the reseed failed; 3 the clock.
 */
#include <errno.h>
#include <fcntl.h>
#include <linux/random.h>
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
	char *end;
	int fd, i;

	if (argc != 3 || strlen(argv[1]) != 2 * SEED_BYTES) {
		fprintf(stderr, "usage: vms-resume SEED_HEX(%d hex digits) EPOCH_NS\n",
			2 * SEED_BYTES);
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
	errno = 0;
	ns = strtoull(argv[2], &end, 10);
	if (errno || *end || end == argv[2]) {
		fprintf(stderr, "vms-resume: bad EPOCH_NS %s\n", argv[2]);
		return 1;
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

	ts.tv_sec = (time_t)(ns / 1000000000ULL);
	ts.tv_nsec = (long)(ns % 1000000000ULL);
	if (clock_settime(CLOCK_REALTIME, &ts)) {
		fprintf(stderr, "vms-resume: setting the clock: %s\n", strerror(errno));
		return 3;
	}
	return 0;
}
