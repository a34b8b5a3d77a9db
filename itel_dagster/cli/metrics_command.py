"""`itel-dagster metrics serve|show`: the Prometheus metrics of both workers, over HTTP or printed.

Command-line wiring only; the metrics live in itel_dagster.metrics. Neither command writes to the
metrics store or commits offsets.
"""

from __future__ import annotations

import signal
import threading

import click

from itel_dagster.metrics.exporter import DEFAULT_PORT, pipeline_registry, render, serve


def _bootstrap(option: str | None):
    from itel_dagster.settings.kafka import bootstrap_servers

    return (lambda: option) if option else bootstrap_servers


_BOOTSTRAP = click.option(
    "--bootstrap-servers", default=None,
    help="Kafka address for the lag gauges [default: KAFKA_BOOTSTRAP_SERVERS, else the local "
         "broker of `itel-dagster kafka start`].")


@click.group()
def metrics() -> None:
    """Prometheus metrics: counters of every run process, and consumer lag per partition."""


@metrics.command("serve")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", type=click.IntRange(0, 65535), default=DEFAULT_PORT, show_default=True,
              envvar="ITEL_METRICS_PORT", show_envvar=True, help="Port (0: any free one).")
@_BOOTSTRAP
def serve_command(host, port, bootstrap_servers) -> None:
    """Serve http://HOST:PORT/metrics until Ctrl-C or SIGTERM.

    The counters come from <ITEL_STATE_DIR>/metrics.sqlite (or ITEL_STATE_URL's PostgreSQL),
    where every run process adds its counts; lag is read from Kafka at each scrape.
    """
    try:
        server = serve(pipeline_registry(bootstrap_servers=_bootstrap(bootstrap_servers)),
                       host, port)
    except OSError as exc:
        raise click.ClickException(f"cannot listen on {host}:{port}: {exc}") from None
    click.echo(f"metrics on http://{host}:{server.server_port}/metrics")
    stopped = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopped.set())
    try:
        while not stopped.wait(0.5):
            pass
    except KeyboardInterrupt:
        pass
    finally:
        server.shutdown()
        server.server_close()


@metrics.command("show")
@click.option("--no-lag", is_flag=True, help="Leave out the consumer lag (no Kafka needed).")
@_BOOTSTRAP
def show_command(no_lag, bootstrap_servers) -> None:
    """Print the current values, as /metrics would serve them."""
    bootstrap = None if no_lag else _bootstrap(bootstrap_servers)
    click.echo(render(pipeline_registry(bootstrap_servers=bootstrap)), nl=False)
