/** Spec test helpers. */
import { SpecError } from '../../src/spec/errors.js';

/** The issues of the SpecError `fn` throws; any other outcome fails. */
export function issuesOf(fn: () => unknown): { path: string; message: string }[] {
  try {
    fn();
  } catch (err) {
    if (err instanceof SpecError) return err.issues;
    throw err;
  }
  throw new Error('expected a SpecError');
}
