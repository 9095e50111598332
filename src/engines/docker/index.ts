export { DockerEngine, type DockerEngineOptions, type BackoffOptions } from "./engine.ts";
export { resolveImage, imageTag, imageExists } from "./build.ts";
export { readBuildContext, parseDockerignore, isIgnored } from "./context.ts";
export { LABEL, containerName, createDockerClient, dockerAddress, ensureReachable, listExperimentContainers, demuxLogs } from "./client.ts";
