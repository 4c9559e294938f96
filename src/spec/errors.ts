import { OsfarmError } from '../base/errors.js';

/** One problem in a spec: the field's path (`spec.packages[2]`) and what is wrong with it. */
export interface SpecIssue {
  path: string;
  message: string;
}

/**
 * An invalid spec (code `OSFARM_BAD_SPEC`). The message lists every problem, one a line,
 * each starting with the field's path; `issues` has them as data.
 */
export class SpecError extends OsfarmError {
  readonly issues: SpecIssue[];
  constructor(issues: SpecIssue[]) {
    const lines = issues.map((i) => `${i.path}: ${i.message}`);
    super('OSFARM_BAD_SPEC', lines.length === 1 ? lines[0]! : `${lines.length} problems in the spec:\n${lines.join('\n')}`);
    this.issues = issues;
  }
}
