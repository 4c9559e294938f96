/**
 * The image builder: genfs for today's distributions. build() makes the images a spec
 * (src/spec/) describes, stage by stage in the stage store, in a chroot, and adds them to
 * the repository. See docs/build.md and docs/stages.md.
 */
export {
  type BuildEvent,
  type BuildOptions,
  type BuildOutput,
  type BuildResult,
  type Phase,
  build,
  outputPaths,
  plannedStages,
} from './builder.js';
export type { StagePlan } from './plan.js';
export { defaultWorkDir } from '../base/env.js';
