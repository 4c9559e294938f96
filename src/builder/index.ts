/**
 * The image builder: genfs for today's distributions. A spec (YAML, JSON, XML, or genfs-style
 * flags) names the distribution, release, architecture, groups, packages, root password,
 * files, commands and outputs; build() makes the images in a chroot and adds them to the
 * repository. See docs/build.md.
 */
export {
  type BuildSpec,
  type CanonicalFile,
  type CanonicalSpec,
  type SpecFile,
  type SpecOptions,
  canonicalJson,
  canonicalSpec,
  loadSpec,
  parseSpec,
  parseTarget,
  SPEC_VERSION,
  specDigest,
  specFromObject,
  setOnChain,
  stableStringify,
} from '../spec/spec.js';
export { type SpecFormat, formatOf } from '../spec/formats.js';
export { SpecError, type SpecIssue } from '../spec/errors.js';
export {
  type BuildEvent,
  type BuildOptions,
  type BuildOutput,
  type BuildResult,
  type Phase,
  build,
  outputPaths,
} from './builder.js';
export {
  ARCHITECTURES,
  type Architecture,
  BACKENDS,
  type Backend,
  DISTRIBUTIONS,
  type Distribution,
  OUTPUT_FORMATS,
  type OutputFormat,
  planGroup,
} from '../spec/distros.js';
export { deriveSalt, sha512Crypt, verifySha512Crypt } from '../spec/password.js';
export { defaultWorkDir } from '../base/env.js';
