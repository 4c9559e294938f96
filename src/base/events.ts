/**
 * The one event shape of osfarm's streams (build, push, pull, receive; the web's job
 * events and the CLI's `--json` lines follow it): objects keyed by `type`, progress as
 * `{ type: 'progress', done, total, … }`, and a last event `{ type: 'result', result }`
 * carrying what the call resolves with.
 */

/** The last event of a stream: the operation's result (what its promise resolves with). */
export interface ResultEvent<R> {
  type: 'result';
  result: R;
}

/**
 * A listener wrapped so that its errors never break the operation that reports to it
 * (a caller's bug in a progress bar must not fail a push).
 */
export function eventSink<E>(listener: ((event: E) => void) | undefined): (event: E) => void {
  if (!listener) return () => {};
  return (event) => {
    try {
      listener(event);
    } catch {
      /* the listener's own problem */
    }
  };
}
