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
} from './builder.js';
export { defaultWorkDir } from '../base/env.js';
