/*
 * serve_one: leases a TCP port from portbrokerd, prints it, serves one connection a line of
 * text, releases the lease and exits 0. On any error it prints pb_last_error() (or the OS's
 * error) and exits 1.
 *
 *   serve_one [SPEC]      SPEC as portctl takes it; tcp:127.0.0.1:0 when absent
 *
 * The broker is found as portctl finds it ($PORTBROKER_SOCKET, then the usual paths).
 * Build:  cc -Wall -Wextra -Werror -I capi/include capi/examples/serve_one.c \
 *            -L target/release -lportbroker -Wl,-rpath,"$PWD/target/release" -o serve_one
 */
#define _POSIX_C_SOURCE 200809L

#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <errno.h>
#include <unistd.h>
#include <sys/socket.h>

#include "portbroker.h"

static int fail(const char *what) {
    fprintf(stderr, "serve_one: %s: %s (code %d)\n", what, pb_last_error(), pb_last_error_code());
    return 1;
}

int main(int argc, char **argv) {
    const char *spec = argc > 1 ? argv[1] : "tcp:127.0.0.1:0";

    pb_broker *broker = pb_connect(NULL);
    if (broker == NULL)
        return fail("connect");

    int fd = -1;
    uint16_t port = 0;
    int64_t lease = pb_lease(broker, &spec, 1, &fd, 1, &port);
    if (lease < 0) {
        pb_holder holder;
        int rc = fail("lease");
        /* The message above names the holder with its name escaped; holder.name is raw. */
        if (pb_last_error_holder(&holder) == 1)
            fprintf(stderr, "serve_one: held by pid %d (lease %lld)\n", (int)holder.pid,
                    (long long)holder.lease_id);
        pb_close(broker);
        return rc;
    }
    printf("serving on port %u (lease %lld)\n", (unsigned)port, (long long)lease);
    fflush(stdout);

    int conn = accept(fd, NULL, NULL);
    if (conn < 0) {
        fprintf(stderr, "serve_one: accept: %s\n", strerror(errno));
        close(fd);
        pb_close(broker);
        return 1;
    }
    static const char line[] = "hello from serve_one\n";
    if (write(conn, line, sizeof line - 1) != (ssize_t)(sizeof line - 1)) {
        fprintf(stderr, "serve_one: write: %s\n", strerror(errno));
        close(conn);
        close(fd);
        pb_close(broker);
        return 1;
    }
    close(conn);

    /* Close the socket first: the port is free once it is closed and the lease has ended. */
    close(fd);
    if (pb_release(broker, lease) != 0) {
        int rc = fail("release");
        pb_close(broker);
        return rc;
    }
    pb_close(broker);
    return 0;
}
