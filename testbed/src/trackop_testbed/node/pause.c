/* The node's sandbox ("pause") process: holds the Pod's namespaces open until told to stop.
 * Exits 0 on SIGINT or SIGTERM; reaps children that are re-parented to it. Built static
 * (gcc -static) so that its image holds this one file. */
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

static void on_stop(int sig) { (void)sig; _exit(0); }

static void on_child(int sig) {
    (void)sig;
    while (waitpid(-1, 0, WNOHANG) > 0) {
    }
}

int main(void) {
    struct sigaction stop = {.sa_handler = on_stop};
    struct sigaction child = {.sa_handler = on_child, .sa_flags = SA_NOCLDSTOP | SA_RESTART};
    if (sigaction(SIGINT, &stop, 0) || sigaction(SIGTERM, &stop, 0) || sigaction(SIGCHLD, &child, 0))
        return 1;
    for (;;)
        pause();
}
