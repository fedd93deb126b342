/*
 * probe: drives libportbroker through its C header for client/tests/c_abi.rs. It reads one
 * command a line on stdin and answers one line on stdout:
 *
 *   connect PATH|-        pb_connect(PATH), or pb_connect(NULL) for "-"   -> ok | err CODE TEXT
 *   lease SPEC...         pb_lease; keeps the fds                          -> ok ID PORT... | err
 *   holder                pb_last_error_holder      -> holder PID UID GID LEASE NAME | none | -1
 *   fds ID                each fd of lease ID: bound port, close-on-exec and non-blocking flags
 *                                                   -> fds PORT:CLOEXEC:NONBLOCK...
 *   release ID            closes the lease's fds, then pb_release      -> ok | err CODE TEXT
 *   renew ID MS           pb_renew                                     -> ok | err CODE TEXT
 *   close                 pb_close (the fds stay open)                 -> ok
 *   nulls                 every NULL and bad-argument call, each       -> NAME RC CODE TEXT
 *                         on its own line, then                        -> done
 */
#define _POSIX_C_SOURCE 200809L

#include <fcntl.h>
#include <netinet/in.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "portbroker.h"

#define MAX_LEASES 16
#define MAX_SPECS 8

static pb_broker *broker;

static struct {
    int64_t id;
    size_t n;
    int fds[MAX_SPECS];
} leases[MAX_LEASES];

static void say_err(void) {
    printf("err %d %s\n", pb_last_error_code(), pb_last_error());
}

static int bound_port(int fd) {
    struct sockaddr_storage addr;
    socklen_t len = sizeof addr;
    if (getsockname(fd, (struct sockaddr *)&addr, &len) != 0)
        return -1;
    if (addr.ss_family == AF_INET)
        return ntohs(((struct sockaddr_in *)&addr)->sin_port);
    return ntohs(((struct sockaddr_in6 *)&addr)->sin6_port);
}

static void cmd_lease(char *args) {
    const char *specs[MAX_SPECS];
    size_t n = 0;
    for (char *spec = strtok(args, " "); spec != NULL && n < MAX_SPECS; spec = strtok(NULL, " "))
        specs[n++] = spec;
    int fds[MAX_SPECS];
    uint16_t ports[MAX_SPECS];
    int64_t id = pb_lease(broker, specs, n, fds, MAX_SPECS, ports);
    if (id < 0) {
        say_err();
        return;
    }
    for (size_t slot = 0; slot < MAX_LEASES; slot++) {
        if (leases[slot].id == 0) {
            leases[slot].id = id;
            leases[slot].n = n;
            memcpy(leases[slot].fds, fds, sizeof fds);
            break;
        }
    }
    printf("ok %lld", (long long)id);
    for (size_t i = 0; i < n; i++)
        printf(" %u", (unsigned)ports[i]);
    printf("\n");
}

static int slot_of(int64_t id) {
    for (int slot = 0; slot < MAX_LEASES; slot++)
        if (leases[slot].id == id)
            return slot;
    return -1;
}

static void cmd_fds(int64_t id) {
    int slot = slot_of(id);
    printf("fds");
    for (size_t i = 0; slot >= 0 && i < leases[slot].n; i++) {
        int fd = leases[slot].fds[i];
        int cloexec = (fcntl(fd, F_GETFD) & FD_CLOEXEC) != 0;
        int nonblock = (fcntl(fd, F_GETFL) & O_NONBLOCK) != 0;
        printf(" %d:%d:%d", bound_port(fd), cloexec, nonblock);
    }
    printf("\n");
}

static void cmd_release(int64_t id) {
    int slot = slot_of(id);
    if (slot >= 0) {
        for (size_t i = 0; i < leases[slot].n; i++)
            close(leases[slot].fds[i]);
        leases[slot].id = 0;
    }
    if (pb_release(broker, id) == 0)
        printf("ok\n");
    else
        say_err();
}

static void cmd_holder(void) {
    pb_holder holder;
    int rc = pb_last_error_holder(&holder);
    if (rc == 1)
        printf("holder %d %u %u %lld %s\n", (int)holder.pid, (unsigned)holder.uid,
               (unsigned)holder.gid, (long long)holder.lease_id, holder.name);
    else
        printf(rc == 0 ? "none\n" : "-1\n");
}

static void report(const char *name, long long rc) {
    printf("%s %lld %d %s\n", name, rc, pb_last_error_code(), pb_last_error());
}

static void cmd_nulls(void) {
    const char *good[1] = {"tcp:127.0.0.1:0"};
    const char *null_item[2] = {"tcp:127.0.0.1:0", NULL};
    const char *two[2] = {"tcp:127.0.0.1:0", "udp:127.0.0.1:0"};
    int fds[2] = {-1, -1};
    report("lease-null-broker", pb_lease(NULL, good, 1, fds, 1, NULL));
    report("lease-null-specs", pb_lease(broker, NULL, 1, fds, 1, NULL));
    report("lease-null-spec-item", pb_lease(broker, null_item, 2, fds, 2, NULL));
    report("lease-null-fds", pb_lease(broker, good, 1, NULL, 1, NULL));
    report("lease-small-fds", pb_lease(broker, two, 2, fds, 1, NULL));
    report("lease-no-specs", pb_lease(broker, good, 0, fds, 1, NULL));
    report("lease-bad-spec", pb_lease(broker, (const char *[]){"tcp:localhost"}, 1, fds, 1, NULL));
    report("release-null-broker", pb_release(NULL, 1));
    report("release-id-zero", pb_release(broker, 0));
    report("renew-null-broker", pb_renew(NULL, 1, 1000));
    report("renew-id-negative", pb_renew(broker, -5, 1000));
    report("holder-null", pb_last_error_holder(NULL));
    pb_close(NULL);
    report("close-null", 0);
    printf("fds-untouched %d %d\n", fds[0], fds[1]);
    printf("done\n");
}

int main(void) {
    char line[4096];
    while (fgets(line, sizeof line, stdin) != NULL) {
        line[strcspn(line, "\n")] = '\0';
        char *args = strchr(line, ' ');
        if (args != NULL)
            *args++ = '\0';
        if (strcmp(line, "connect") == 0) {
            broker = pb_connect(args == NULL || strcmp(args, "-") == 0 ? NULL : args);
            if (broker != NULL)
                printf("ok\n");
            else
                say_err();
        } else if (strcmp(line, "lease") == 0 && args != NULL) {
            cmd_lease(args);
        } else if (strcmp(line, "holder") == 0) {
            cmd_holder();
        } else if (strcmp(line, "fds") == 0 && args != NULL) {
            cmd_fds(atoll(args));
        } else if (strcmp(line, "release") == 0 && args != NULL) {
            cmd_release(atoll(args));
        } else if (strcmp(line, "renew") == 0 && args != NULL) {
            long long id = 0;
            unsigned long long ms = 0;
            sscanf(args, "%lld %llu", &id, &ms);
            if (pb_renew(broker, id, ms) == 0)
                printf("ok\n");
            else
                say_err();
        } else if (strcmp(line, "close") == 0) {
            pb_close(broker);
            broker = NULL;
            printf("ok\n");
        } else if (strcmp(line, "nulls") == 0) {
            cmd_nulls();
        } else {
            printf("unknown command %s\n", line);
        }
        fflush(stdout);
    }
    return 0;
}
