/*
 * glibc's _FORTIFY_SOURCE entry point for fprintf, for musl links.
 *
 * Debian's LLVM libunwind.a (libunwind-14-dev) was compiled against glibc with
 * fortification on, so its debug-logging paths call __fprintf_chk, which musl
 * does not provide. scripts/build-agent-static compiles this file with
 * musl-gcc and adds it to a private copy of that archive. The `flag` argument
 * (fortify level) only matters for %n checks; forwarding to vfprintf is what
 * the unfortified call would have done.
 */
#include <stdarg.h>
#include <stdio.h>

int __fprintf_chk(FILE *stream, int flag, const char *format, ...)
{
	va_list ap;
	int ret;

	(void)flag;
	va_start(ap, format);
	ret = vfprintf(stream, format, ap);
	va_end(ap);
	return ret;
}
