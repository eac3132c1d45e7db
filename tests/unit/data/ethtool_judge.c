/* A stand-in NIC for the ethtool binary, loaded with LD_PRELOAD by tests/unit/test_ethtool_steer.py.
 *
 * It answers the questions ethtool asks before a change (ring count, rule count, indirection table size
 * and contents) the way a NIC with ntuple and a 4-queue, 128-bucket RSS table would, and writes every
 * SIOCETHTOOL request it gets to $KB_JUDGE_LOG as "CMD HEX" (sizes from the system's linux/ethtool.h, not
 * from kbypass), so the test compares kbypass's encoding with the bytes the real ethtool sends. Anything
 * else is refused with EOPNOTSUPP, as veth does. With $KB_JUDGE_TAKEN (e.g. "1023,1021") it is a driver
 * that does not pick rule locations (no RX_CLS_LOC_ANY), with a 1024-rule table in which those are taken. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <linux/ethtool.h>
#include <linux/sockios.h>
#include <net/if.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define RINGS 4
#define TABLE 128
#define RULES 1024

static void record(__u32 cmd, const void *p, size_t n)
{
	const char *path = getenv("KB_JUDGE_LOG");
	FILE *f = path ? fopen(path, "a") : NULL;
	if (!f)
		return;
	fprintf(f, "%#x ", cmd);
	for (size_t i = 0; i < n; i++)
		fprintf(f, "%02x", ((const unsigned char *)p)[i]);
	fputc('\n', f);
	fclose(f);
}

int ioctl(int fd, unsigned long req, ...)
{
	static int (*real)(int, unsigned long, void *);
	va_list ap;
	va_start(ap, req);
	void *arg = va_arg(ap, void *);
	va_end(ap);
	if (!real)
		real = (int (*)(int, unsigned long, void *))dlsym(RTLD_NEXT, "ioctl");
	if (req != SIOCETHTOOL)
		return real(fd, req, arg);
	struct ifreq *ifr = arg;
	__u32 cmd = *(__u32 *)ifr->ifr_data;
	struct ethtool_rxnfc *nfc = (void *)ifr->ifr_data;
	struct ethtool_rxfh_indir *indir = (void *)ifr->ifr_data;
	const char *taken = getenv("KB_JUDGE_TAKEN");
	switch (cmd) {
	case ETHTOOL_GRXRINGS:
		nfc->data = RINGS;
		return 0;
	case ETHTOOL_GRXCLSRLCNT:
		if (!taken) {
			nfc->data = RX_CLS_LOC_SPECIAL; /* the driver picks locations */
			nfc->rule_cnt = 0;
			return 0;
		}
		nfc->data = RULES;
		nfc->rule_cnt = 0;
		for (const char *p = taken; p; p = strchr(p, ','), p = p ? p + 1 : p)
			nfc->rule_cnt++;
		return 0;
	case ETHTOOL_GRXCLSRLALL: {
		__u32 n = 0, room = nfc->rule_cnt;
		for (const char *p = taken; p && n < room; p = strchr(p, ','), p = p ? p + 1 : p)
			nfc->rule_locs[n++] = (__u32)strtoul(p, NULL, 10);
		nfc->rule_cnt = n;
		nfc->data = RULES;
		return 0;
	}
	case ETHTOOL_SRXCLSRLINS:
		record(cmd, nfc, sizeof(*nfc));
		if (nfc->fs.location == RX_CLS_LOC_ANY)
			nfc->fs.location = 7;
		return 0;
	case ETHTOOL_SRXCLSRLDEL:
		record(cmd, nfc, sizeof(*nfc));
		return 0;
	case ETHTOOL_GRXFHINDIR:
		if (indir->size == 0) {
			indir->size = TABLE;
			return 0;
		}
		for (__u32 i = 0; i < TABLE && i < indir->size; i++)
			indir->ring_index[i] = i % RINGS;
		indir->size = TABLE;
		return 0;
	case ETHTOOL_SRXFHINDIR:
		record(cmd, indir, sizeof(*indir) + indir->size * sizeof(__u32));
		return 0;
	default:
		errno = EOPNOTSUPP;
		return -1;
	}
}
