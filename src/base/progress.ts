/** Progress of a long operation: units done (bytes, usually) out of a total. */
export interface ProgressEvent {
  done: number;
  total: number;
}

export type ProgressListener = (event: ProgressEvent) => void;

/**
 * Wraps a listener for a native task: native events arrive through a queue and may
 * trail the task's result, so this drops events after `settle` and makes sure the
 * listener's last event is the final state.
 */
export function settledProgress(listener: ProgressListener | undefined): {
  listener: ProgressListener | undefined;
  settle(final?: ProgressEvent): void;
} {
  if (!listener) return { listener: undefined, settle() {} };
  let open = true;
  let last: ProgressEvent = { done: -1, total: 0 };
  return {
    listener: (e) => {
      if (!open) return;
      last = e;
      listener(e);
    },
    settle(final) {
      if (!open) return;
      open = false;
      if (final && (final.done !== last.done || final.total !== last.total)) listener(final);
    },
  };
}

/** Runs a native task with a progress listener; `final` maps the result to the last event. */
export async function withProgress<T>(
  listener: ProgressListener | undefined,
  run: (listener: ProgressListener | undefined) => Promise<T>,
  final?: (result: T) => ProgressEvent,
): Promise<T> {
  const p = settledProgress(listener);
  try {
    const result = await run(p.listener);
    p.settle(final?.(result));
    return result;
  } finally {
    p.settle();
  }
}
