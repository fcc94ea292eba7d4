-- Argo CD health check for adc-operator's GcpCloud, VirtualService and VpcRoute (adc.dev).
-- The operator writes kstatus conditions (Ready, Reconciling, Stalled) and
-- status.observedGeneration; a status about an older generation says nothing about the spec
-- that was just synced. Uses only Lua's base library (no useOpenLibs needed).
local hs = {}

local generation = nil
if obj.metadata ~= nil then
  generation = obj.metadata.generation
end
if obj.status == nil or obj.status.observedGeneration == nil or
    (generation ~= nil and obj.status.observedGeneration < generation) then
  hs.status = "Progressing"
  if generation ~= nil then
    hs.message = "Waiting for the operator to observe generation " .. generation
  else
    hs.message = "Waiting for the operator to report status"
  end
  return hs
end

local ready = nil
local reconciling = nil
local stalled = nil
if obj.status.conditions ~= nil then
  for i, condition in ipairs(obj.status.conditions) do
    if condition.type == "Ready" then
      ready = condition
    elseif condition.type == "Reconciling" then
      reconciling = condition
    elseif condition.type == "Stalled" then
      stalled = condition
    end
  end
end

-- The condition's message, or its reason when the message is empty.
local function describe(condition)
  if condition.message ~= nil and condition.message ~= "" then
    return condition.message
  end
  return condition.reason or condition.type
end

if stalled ~= nil and stalled.status == "True" then
  hs.status = "Degraded"
  hs.message = describe(stalled)
  return hs
end
if ready ~= nil and ready.status == "True" then
  hs.status = "Healthy"
  hs.message = describe(ready)
  return hs
end
if reconciling ~= nil and reconciling.status == "True" then
  hs.status = "Progressing"
  hs.message = describe(reconciling)
  return hs
end
-- Held on purpose by a management policy: waiting for a plan's approval, or paused.
if ready ~= nil and (ready.reason == "AwaitingApproval" or ready.reason == "PlanChanged" or
    ready.reason == "Paused") then
  hs.status = "Suspended"
  hs.message = describe(ready)
  return hs
end

hs.status = "Progressing"
hs.message = "Waiting for the operator to report Ready"
return hs
